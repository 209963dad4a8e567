use proptest::prelude::*;

use super::*;

fn key(n: u8) -> ed25519::Keypair {
    ed25519::Keypair::from(ed25519::SecretKey::try_from_bytes([n; 32]).unwrap())
}

fn peer(n: u8) -> PeerId {
    PublicKey::from(key(n).public()).to_peer_id()
}

fn add(n: u8, role: Role) -> Action {
    Action::Add {
        member: peer(n),
        role,
    }
}

fn remove(n: u8) -> Action {
    Action::Remove { member: peer(n) }
}

fn change(n: u8, role: Role) -> Action {
    Action::ChangeRole {
        member: peer(n),
        role,
    }
}

/// Owner 0, admins 1 and 2 (1 added first: the senior), editor 3, reader 4.
fn team() -> (Space, SignedOp) {
    let (mut s, create) = Space::create("team", &key(0), 1).unwrap();
    s.act(add(1, Role::Admin), &key(0), 2).unwrap();
    s.act(add(2, Role::Admin), &key(0), 3).unwrap();
    s.act(add(3, Role::Editor), &key(1), 4).unwrap();
    s.act(add(4, Role::Reader), &key(2), 5).unwrap();
    (s, create)
}

/// An operation by `n` on explicit parents (sorted here).
fn op_on(parents: &[OpId], n: u8, action: Action, time_ms: u64) -> SignedOp {
    let mut parents = parents.to_vec();
    parents.sort();
    parents.dedup();
    Op {
        parents,
        author: peer(n),
        time_ms,
        action,
    }
    .sign(&key(n))
}

/// Applies `ops` in the given order to a fresh replica, retrying those with missing parents.
fn replay(create: &SignedOp, ops: &[SignedOp]) -> Space {
    let mut s = Space::from_create(create.clone()).unwrap();
    let mut pending: Vec<SignedOp> = ops.to_vec();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|op| match s.apply(op.clone()) {
            Ok(_) => false,
            Err(OpError::MissingParents(_)) => true,
            Err(e) => panic!("valid op refused on replay: {e}"),
        });
        assert!(pending.len() < before, "no progress: parents never arrive");
    }
    s
}

fn roles(list: &[(u8, Role)]) -> BTreeMap<PeerId, Role> {
    list.iter().map(|&(n, r)| (peer(n), r)).collect()
}

#[test]
fn create_makes_the_owner_the_only_member_and_the_id_is_the_create_hash() {
    let (s, create) = Space::create("notes", &key(0), 7).unwrap();
    assert_eq!(s.id(), create.id());
    assert_eq!(s.name(), "notes");
    assert_eq!(s.owner(), peer(0));
    assert_eq!(s.members(), roles(&[(0, Role::Owner)]));
    assert_eq!(s.heads(), vec![create.id()]);
    let replica = Space::from_create(create).unwrap();
    assert_eq!(replica.id(), s.id());
    assert_eq!(replica.members(), s.members());
}

#[test]
fn add_change_and_remove_members() {
    let (mut s, _) = team();
    assert_eq!(
        s.members(),
        roles(&[
            (0, Role::Owner),
            (1, Role::Admin),
            (2, Role::Admin),
            (3, Role::Editor),
            (4, Role::Reader),
        ])
    );
    assert!(s.can_write(&peer(3)) && !s.can_write(&peer(4)) && !s.can_write(&peer(9)));
    s.act(change(4, Role::Editor), &key(1), 10).unwrap();
    assert_eq!(s.role(&peer(4)), Some(Role::Editor));
    s.act(remove(3), &key(2), 11).unwrap();
    assert_eq!(s.role(&peer(3)), None);
    // Re-adding a removed member works; adding a member twice or removing a non-member does not.
    s.act(add(3, Role::Reader), &key(0), 12).unwrap();
    assert_eq!(s.role(&peer(3)), Some(Role::Reader));
    assert_eq!(
        s.act(add(3, Role::Editor), &key(0), 13),
        Err(OpError::AlreadyMember(peer(3)))
    );
    assert_eq!(
        s.act(remove(9), &key(0), 14),
        Err(OpError::NotMember(peer(9)))
    );
    assert_eq!(
        s.act(change(9, Role::Reader), &key(0), 15),
        Err(OpError::NotMember(peer(9)))
    );
}

#[test]
fn a_forged_or_tampered_signature_is_refused() {
    let (mut s, _) = team();
    let len = s.len();
    // Claims the owner as author, signed by an outsider.
    let forged = Op {
        parents: s.heads(),
        author: peer(0),
        time_ms: 20,
        action: add(9, Role::Admin),
    }
    .sign(&key(9));
    assert_eq!(
        s.apply(forged),
        Err(OpError::BadSignature { author: peer(0) })
    );
    // A genuine op whose action was changed after signing.
    let mut tampered = s.sign(add(9, Role::Reader), &key(0), 21);
    tampered.op.action = add(9, Role::Admin);
    assert_eq!(
        s.apply(tampered),
        Err(OpError::BadSignature { author: peer(0) })
    );
    let mut short = s.sign(add(9, Role::Reader), &key(0), 22);
    short.signature.truncate(10);
    assert!(matches!(s.apply(short), Err(OpError::BadSignature { .. })));
    assert_eq!(s.len(), len);
    assert_eq!(s.role(&peer(9)), None);
}

#[test]
fn ops_by_readers_editors_and_outsiders_are_refused() {
    let (mut s, _) = team();
    let before = s.members();
    for (n, role) in [(4, Some(Role::Reader)), (3, Some(Role::Editor)), (9, None)] {
        let op = s.sign(add(8, Role::Admin), &key(n), 30);
        assert_eq!(
            s.apply(op),
            Err(OpError::NotAdmin {
                author: peer(n),
                role
            })
        );
        let op = s.sign(remove(1), &key(n), 31);
        assert!(matches!(s.apply(op), Err(OpError::NotAdmin { .. })));
    }
    assert_eq!(s.members(), before);
}

#[test]
fn a_removed_admins_later_op_is_refused() {
    let (mut s, _) = team();
    s.act(remove(2), &key(0), 40).unwrap();
    let later = s.sign(add(8, Role::Editor), &key(2), 41);
    assert_eq!(
        s.apply(later),
        Err(OpError::NotAdmin {
            author: peer(2),
            role: None
        })
    );
    // Demoted is the same as removed for membership.
    s.act(change(1, Role::Editor), &key(0), 42).unwrap();
    let later = s.sign(remove(3), &key(1), 43);
    assert!(matches!(s.apply(later), Err(OpError::NotAdmin { .. })));
    assert_eq!(s.role(&peer(3)), Some(Role::Editor));
}

#[test]
fn a_removed_admins_backdated_op_is_stored_but_void_in_any_order() {
    let (mut s, create) = team();
    let before_removal = s.heads();
    let removal = s.act(remove(2), &key(0), 50).unwrap();
    // Admin 2 names parents from before its removal: concurrent with it, so void.
    let backdated = op_on(&before_removal, 2, add(8, Role::Admin), 51);
    assert_eq!(
        s.apply(backdated.clone()),
        Ok(Applied::Added {
            id: backdated.id(),
            effective: false
        })
    );
    assert_eq!(s.role(&peer(8)), None);
    assert_eq!(s.role(&peer(2)), None);
    // A replica that sees the backdated op before the removal ends the same.
    let mut ops: Vec<SignedOp> = s.ops().skip(1).cloned().collect();
    let (r, b) = (
        ops.iter().position(|o| *o == removal).unwrap(),
        ops.iter().position(|o| *o == backdated).unwrap(),
    );
    ops.swap(r, b);
    let other = replay(&create, &ops);
    assert_eq!(other.members(), s.members());
    assert!(!other.is_effective(&backdated.id()));
}

#[test]
fn voiding_cascades_to_members_added_by_a_void_op() {
    let (mut s, _) = team();
    let base = s.heads();
    s.act(remove(2), &key(0), 60).unwrap();
    // Concurrently, admin 2 made 7 an admin, and 7 then added 8.
    let grant = op_on(&base, 2, add(7, Role::Admin), 61);
    let by7 = op_on(&[grant.id()], 7, add(8, Role::Editor), 62);
    s.apply(grant).unwrap();
    s.apply(by7).unwrap();
    assert_eq!(s.role(&peer(7)), None);
    assert_eq!(s.role(&peer(8)), None);
}

/// Found by `non_admins_never_change_membership`: a removed admin's backdated grant makes a
/// confederate an admin for as long as the grant is not known to be void; the confederate's
/// removal of the admin must not void the admin's earlier, legitimate operations.
#[test]
fn a_confederate_of_a_removed_admin_voids_nothing() {
    let (mut s, _) = team();
    s.act(remove(2), &key(0), 65).unwrap();
    let add3 = s.ops().nth(3).unwrap().id();
    let grant = op_on(&[add3], 2, change(3, Role::Admin), 66);
    let revenge = op_on(&[grant.id()], 3, remove(2), 67);
    s.apply(grant.clone()).unwrap();
    s.apply(revenge.clone()).unwrap();
    assert!(!s.is_effective(&grant.id()) && !s.is_effective(&revenge.id()));
    assert_eq!(
        s.role(&peer(4)),
        Some(Role::Reader),
        "added by 2 before its removal"
    );
    assert_eq!(s.role(&peer(3)), Some(Role::Editor));
}

#[test]
fn concurrent_add_and_remove_of_a_member_ends_removed() {
    let (mut s, create) = team();
    let base = s.heads();
    // 4 is a reader: admin 1 removes it while admin 2 promotes it.
    let rm = op_on(&base, 1, remove(4), 70);
    let up = op_on(&base, 2, change(4, Role::Admin), 71);
    // Re-adding someone removed concurrently with its removal: 3 is removed by 1 and,
    // concurrently, removed then re-added by 2.
    let rm3 = op_on(&base, 1, remove(3), 72);
    let rm3b = op_on(&base, 2, remove(3), 73);
    let readd3 = op_on(&[rm3b.id()], 2, add(3, Role::Editor), 74);
    for op in [&rm, &up, &rm3, &rm3b, &readd3] {
        s.apply(op.clone()).unwrap();
    }
    assert_eq!(s.role(&peer(4)), None);
    assert_eq!(s.role(&peer(3)), None);
    let mut reversed: Vec<SignedOp> = s.ops().skip(1).cloned().collect();
    reversed.reverse();
    assert_eq!(replay(&create, &reversed).members(), s.members());
}

#[test]
fn concurrent_role_changes_keep_the_lowest_role() {
    let (mut s, create) = team();
    let base = s.heads();
    let a = op_on(&base, 1, change(3, Role::Admin), 80);
    let b = op_on(&base, 2, change(3, Role::Reader), 81);
    let c = op_on(&base, 0, change(4, Role::Editor), 82);
    let d = op_on(&base, 1, change(4, Role::Admin), 83);
    for op in [&a, &b, &c, &d] {
        s.apply(op.clone()).unwrap();
    }
    assert_eq!(s.role(&peer(3)), Some(Role::Reader));
    assert_eq!(s.role(&peer(4)), Some(Role::Editor));
    let mut other: Vec<SignedOp> = s.ops().skip(1).cloned().collect();
    other.reverse();
    assert_eq!(replay(&create, &other).members(), s.members());
    // An op that saw both settles it.
    s.act(change(3, Role::Editor), &key(0), 84).unwrap();
    assert_eq!(s.role(&peer(3)), Some(Role::Editor));
}

#[test]
fn the_owner_cannot_be_removed_demoted_or_given_away() {
    let (mut s, _) = team();
    for (n, action) in [
        (1, remove(0)),
        (1, change(0, Role::Reader)),
        (0, remove(0)),
        (0, change(1, Role::Owner)),
        (1, add(9, Role::Owner)),
    ] {
        let op = s.sign(action, &key(n), 90);
        assert_eq!(s.apply(op), Err(OpError::Owner));
    }
    assert_eq!(s.role(&peer(0)), Some(Role::Owner));
    // Only the create operation makes an owner.
    let other_create = Space::create("x", &key(1), 1).unwrap().1;
    assert_eq!(
        s.apply(other_create.clone()),
        Err(OpError::OtherSpace(other_create.id()))
    );
}

#[test]
fn mutual_removal_is_won_by_the_senior_admin() {
    let (mut s, create) = team();
    let base = s.heads();
    // 1 was made admin before 2: 1's removal of 2 stands, 2's removal of 1 is void.
    let by1 = op_on(&base, 1, remove(2), 100);
    let by2 = op_on(&base, 2, remove(1), 101);
    s.apply(by2.clone()).unwrap();
    s.apply(by1.clone()).unwrap();
    assert_eq!(s.role(&peer(1)), Some(Role::Admin));
    assert_eq!(s.role(&peer(2)), None);
    assert!(s.is_effective(&by1.id()) && !s.is_effective(&by2.id()));
    let mut ops: Vec<SignedOp> = s.ops().skip(1).cloned().collect();
    ops.reverse();
    assert_eq!(replay(&create, &ops).members(), s.members());
}

#[test]
fn a_removal_of_the_remover_by_a_third_admin_voids_the_remover() {
    let (mut s, _) = team();
    s.act(add(5, Role::Admin), &key(0), 105).unwrap();
    let base = s.heads();
    // 2 removes 3 while the owner removes 2: 2's op is concurrent with 2's removal.
    let by2 = op_on(&base, 2, remove(3), 106);
    let by0 = op_on(&base, 0, remove(2), 107);
    s.apply(by2).unwrap();
    s.apply(by0).unwrap();
    assert_eq!(s.role(&peer(3)), Some(Role::Editor));
    assert_eq!(s.role(&peer(2)), None);
}

#[test]
fn unknown_parents_are_reported_and_the_op_applies_once_they_arrive() {
    let (s, create) = team();
    let mut replica = Space::from_create(create).unwrap();
    let ops: Vec<SignedOp> = s.ops().skip(1).cloned().collect();
    let last = ops.last().unwrap().clone();
    assert_eq!(
        replica.apply(last.clone()),
        Err(OpError::MissingParents(last.op.parents.clone()))
    );
    assert_eq!(replica.len(), 1);
    for op in &ops {
        replica.apply(op.clone()).unwrap();
    }
    assert_eq!(replica.members(), s.members());
    assert_eq!(replica.heads(), s.heads());
}

#[test]
fn applying_a_known_op_again_is_a_no_op() {
    let (mut s, create) = team();
    let op = s.act(add(6, Role::Reader), &key(0), 110).unwrap();
    let len = s.len();
    assert_eq!(s.apply(op), Ok(Applied::Known));
    assert_eq!(s.apply(create), Ok(Applied::Known));
    assert_eq!(s.len(), len);
}

#[test]
fn ops_since_sends_only_what_the_peer_lacks() {
    let (mut s, create) = team();
    let mut peer_replica = replay(&create, &s.ops().skip(1).cloned().collect::<Vec<_>>());
    let new1 = s.act(add(6, Role::Reader), &key(0), 120).unwrap();
    let new2 = s.act(add(7, Role::Reader), &key(1), 121).unwrap();
    let missing = s.ops_since(&peer_replica.heads());
    assert_eq!(missing, vec![new1, new2]);
    for op in missing {
        peer_replica.apply(op).unwrap();
    }
    assert_eq!(peer_replica.heads(), s.heads());
    assert!(s.ops_since(&s.heads()).is_empty());
    // Unknown heads are ignored: everything is sent.
    assert_eq!(s.ops_since(&[OpId([9; 32])]).len(), s.len());
}

#[test]
fn malformed_and_oversized_ops_are_refused() {
    let (mut s, _) = team();
    let heads = s.heads();
    let mut unsorted = heads.clone();
    unsorted.push(OpId([0; 32]));
    let op = Op {
        parents: unsorted,
        author: peer(0),
        time_ms: 130,
        action: add(9, Role::Reader),
    }
    .sign(&key(0));
    assert_eq!(s.apply(op), Err(OpError::UnsortedParents));

    let op = Op {
        parents: (0..=MAX_PARENTS as u8).map(|i| OpId([i; 32])).collect(),
        author: peer(0),
        time_ms: 131,
        action: add(9, Role::Reader),
    }
    .sign(&key(0));
    assert!(matches!(
        s.apply(op),
        Err(OpError::TooManyParents { .. } | OpError::TooLarge { .. })
    ));

    let op = Op {
        parents: Vec::new(),
        author: peer(0),
        time_ms: 132,
        action: add(9, Role::Reader),
    }
    .sign(&key(0));
    assert_eq!(s.apply(op), Err(OpError::NoParents));

    assert!(matches!(
        Space::create(&"n".repeat(MAX_NAME_BYTES + 1), &key(0), 1),
        Err(OpError::NameTooLong { .. })
    ));
    assert!(matches!(
        Space::create(&"n".repeat(MAX_OP_BYTES), &key(0), 1),
        Err(OpError::TooLarge { .. })
    ));
    assert!(Space::create(&"n".repeat(MAX_NAME_BYTES), &key(0), 1).is_ok());
    // A replica starts only from a create operation.
    let not_create = s.sign(add(9, Role::Reader), &key(0), 134);
    assert_eq!(
        Space::from_create(not_create).unwrap_err(),
        OpError::Malformed
    );
    let mut create_with_parent = Space::create("x", &key(0), 1).unwrap().1;
    create_with_parent.op.parents = vec![OpId([1; 32])];
    let create_with_parent = create_with_parent.op.sign(&key(0));
    assert_eq!(
        Space::from_create(create_with_parent).unwrap_err(),
        OpError::Malformed
    );

    // Bytes: checked before decoding; garbage is an error, not a panic.
    let good = s.sign(add(9, Role::Reader), &key(0), 133);
    assert_eq!(SignedOp::from_bytes(&good.to_bytes()), Ok(good));
    assert_eq!(SignedOp::from_bytes(&[0xff; 40]), Err(OpError::Malformed));
    assert!(matches!(
        SignedOp::from_bytes(&vec![0; MAX_OP_BYTES + 1]),
        Err(OpError::TooLarge { .. })
    ));
}

#[test]
fn the_log_is_bounded() {
    let (mut s, _) = Space::create("big", &key(0), 0).unwrap();
    let mut t = 0u64;
    while s.len() < MAX_OPS {
        t += 1;
        let mut seed = [7u8; 32];
        seed[..8].copy_from_slice(&t.to_le_bytes());
        let k = ed25519::Keypair::from(ed25519::SecretKey::try_from_bytes(seed).unwrap());
        let member = PublicKey::from(k.public()).to_peer_id();
        s.act(
            Action::Add {
                member,
                role: Role::Reader,
            },
            &key(0),
            t,
        )
        .unwrap();
    }
    assert_eq!(s.len(), MAX_OPS);
    assert_eq!(s.members().len(), MAX_OPS);
    assert_eq!(
        s.act(add(1, Role::Reader), &key(0), t + 1),
        Err(OpError::TooManyOps { max: MAX_OPS })
    );
}

/// One step of a random history: an admin-ish action on one of three replicas, or a sync
/// between two of them.
#[derive(Clone, Debug)]
enum Step {
    Act {
        replica: usize,
        author: u8,
        kind: u8,
        target: u8,
        role: u8,
    },
    Sync {
        from: usize,
        to: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3usize, 0..6u8, 0..3u8, 1..7u8, 0..3u8).prop_map(
            |(replica, author, kind, target, role)| Step::Act { replica, author, kind, target, role }
        ),
        1 => (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

fn role_of(n: u8) -> Role {
    [Role::Reader, Role::Editor, Role::Admin][n as usize % 3]
}

/// Runs a random history over three diverging replicas; returns the create op and every op
/// any replica accepted, in creation order (a topological order).
fn history(steps: &[Step]) -> (SignedOp, Vec<SignedOp>) {
    let (s, create) = Space::create("p", &key(0), 0).unwrap();
    let mut replicas = [s.clone(), s.clone(), s];
    let mut all = Vec::new();
    for (t, st) in steps.iter().enumerate() {
        match *st {
            Step::Act {
                replica,
                author,
                kind,
                target,
                role,
            } => {
                let action = match kind {
                    0 => add(target, role_of(role)),
                    1 => remove(target),
                    _ => change(target, role_of(role)),
                };
                let op = replicas[replica].sign(action, &key(author), t as u64 + 1);
                if replicas[replica].apply(op.clone()).is_ok() {
                    all.push(op);
                }
            }
            Step::Sync { from, to } => {
                let ops = replicas[from].ops_since(&replicas[to].heads());
                for op in ops {
                    replicas[to]
                        .apply(op)
                        .expect("ops from a replica are valid");
                }
            }
        }
    }
    (create, all)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two replicas that receive the same valid ops in different orders (any order; ops whose
    /// parents are missing are retried) end with identical members, effects and heads.
    #[test]
    fn replicas_converge_whatever_the_order(
        steps in proptest::collection::vec(step(), 1..40),
        seed in any::<u64>(),
    ) {
        let (create, all) = history(&steps);
        let in_order = replay(&create, &all);
        let mut shuffled = all.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let other = replay(&create, &shuffled);
        prop_assert_eq!(in_order.members(), other.members());
        prop_assert_eq!(in_order.heads(), other.heads());
        for op in &all {
            prop_assert_eq!(in_order.is_effective(&op.id()), other.is_effective(&op.id()));
        }
        // The owner is always there.
        prop_assert_eq!(in_order.role(&peer(0)), Some(Role::Owner));
    }

    /// No op signed by a non-admin — an editor, a reader, an outsider, or an admin the owner
    /// removed, on any known parents — changes membership.
    #[test]
    fn non_admins_never_change_membership(
        ops in proptest::collection::vec(
            (prop_oneof![Just(2u8), Just(3), Just(4), Just(9)], 0..3u8, 0..10u8, 0..3u8,
             proptest::collection::vec(any::<prop::sample::Index>(), 1..3)),
            1..20,
        ),
    ) {
        let (mut s, _) = team();
        s.act(remove(2), &key(0), 200).unwrap();
        let members = s.members();
        for (t, (author, kind, target, role, parents)) in ops.into_iter().enumerate() {
            let ids: Vec<OpId> = s.ops().map(SignedOp::id).collect();
            let parents: Vec<OpId> = parents.iter().map(|i| ids[i.index(ids.len())]).collect();
            let action = match kind {
                0 => add(target, role_of(role)),
                1 => remove(target),
                _ => change(target, role_of(role)),
            };
            let _ = s.apply(op_on(&parents, author, action, 300 + t as u64));
            prop_assert_eq!(&s.members(), &members);
        }
    }
}
