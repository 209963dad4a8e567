use proptest::prelude::*;

use super::*;
use crate::wire::{JobSpec, Outcome, RunFailure, UnitSpec};

fn peer(n: u8) -> PeerId {
    let key = libp2p_identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
    key.public().to_peer_id()
}

fn spec(units: usize, replicas: u8, quorum: u8, max: u8) -> JobSpec {
    JobSpec {
        submitter: peer(0),
        program: [1; 32],
        program_size: 10,
        units: (0..units)
            .map(|i| UnitSpec {
                name: format!("u{i}"),
                input: [i as u8; 32],
                size: 1,
            })
            .collect(),
        replicas,
        quorum,
        max_replicas: max,
        fuel: 1000,
        memory: 1 << 20,
        lease_ms: 1000,
        pay: 0,
        created_ms: 0,
    }
}

fn ok(n: u8) -> Outcome {
    Outcome::Ok {
        result: [n; 32],
        size: 1,
        fuel: 7,
    }
}

/// Commits and reveals `outcome` honestly for `worker`.
fn run(job: &mut Job, worker: PeerId, unit: u32, outcome: &Outcome) -> Option<RevealEffect> {
    let ack = job
        .commit(&worker, unit, commitment(&outcome.digest(), &worker), 0)
        .unwrap();
    ack.reveal
        .then(|| job.reveal(&worker, unit, outcome.clone()).unwrap())
}

#[test]
fn two_agreeing_replicas_accept_a_unit_and_never_go_to_one_peer() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(1, 2, 2, 4));
    let (a, b) = (peer(1), peer(2));
    assert_eq!(job.assign(a, &peer(0), &rep, 0), Some(0));
    assert_eq!(
        job.assign(a, &peer(0), &rep, 0),
        None,
        "second replica to the same peer"
    );
    assert_eq!(
        job.assign(peer(0), &peer(0), &rep, 0),
        None,
        "the submitter works not for itself"
    );
    assert_eq!(job.assign(b, &peer(0), &rep, 0), Some(0));
    assert_eq!(
        job.assign(peer(3), &peer(0), &rep, 0),
        None,
        "enough replicas"
    );
    // a commits first: it must wait until a quorum has committed.
    let ack = job
        .commit(&a, 0, commitment(&ok(9).digest(), &a), 0)
        .unwrap();
    assert!(!ack.reveal);
    assert_eq!(job.reveal(&a, 0, ok(9)), Err(Refusal::TooEarly(0)));
    let ack = job
        .commit(&b, 0, commitment(&ok(9).digest(), &b), 0)
        .unwrap();
    assert!(ack.reveal);
    assert_eq!(ack.ask, vec![a]);
    assert_eq!(job.reveal(&b, 0, ok(9)).unwrap(), RevealEffect::Pending);
    let effect = job.reveal(&a, 0, ok(9)).unwrap();
    assert_eq!(
        effect,
        RevealEffect::Decided {
            credited: vec![a, b],
            faulty: vec![]
        }
    );
    assert!(matches!(job.units[0].state, UnitState::Accepted { .. }));
    assert_eq!(job.status, JobStatus::Done);
}

#[test]
fn a_copied_answer_does_not_open_the_copiers_commitment() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(2, 2, 2, 4));
    let (honest, copier) = (peer(1), peer(2));
    job.assign(honest, &peer(0), &rep, 0);
    job.assign(copier, &peer(0), &rep, 0);
    let good = ok(5);
    // The copier cannot know the answer when it commits; it commits to a guess, or copies the
    // honest worker's commitment.
    let honest_commitment = commitment(&good.digest(), &honest);
    job.commit(&honest, 0, honest_commitment, 0).unwrap();
    job.commit(&copier, 0, honest_commitment, 0).unwrap();
    // Someone else takes unit 1: the scan now starts past unit 0.
    assert_eq!(job.assign(peer(9), &peer(0), &rep, 0), Some(1));
    assert_eq!(
        job.reveal(&honest, 0, good.clone()).unwrap(),
        RevealEffect::Pending
    );
    // Having seen the honest reveal, it reveals the same outcome: caught.
    assert_eq!(
        job.reveal(&copier, 0, good.clone()).unwrap(),
        RevealEffect::CommitmentMismatch
    );
    assert_eq!(
        job.units[0].state,
        UnitState::Open,
        "one honest reveal is no quorum"
    );
    // A third worker decides it (the cursor went back to the unit the copier lost).
    let third = peer(3);
    assert_eq!(job.assign(third, &peer(0), &rep, 0), Some(0));
    let effect = run(&mut job, third, 0, &good).unwrap();
    assert_eq!(
        effect,
        RevealEffect::Decided {
            credited: vec![honest, third],
            faulty: vec![]
        }
    );
}

#[test]
fn disagreement_adds_replicas_and_the_minority_is_faulty() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(1, 2, 2, 3));
    let (a, liar, c) = (peer(1), peer(2), peer(3));
    job.assign(a, &peer(0), &rep, 0);
    job.assign(liar, &peer(0), &rep, 0);
    let lie = ok(66);
    job.commit(&a, 0, commitment(&ok(1).digest(), &a), 0)
        .unwrap();
    job.commit(&liar, 0, commitment(&lie.digest(), &liar), 0)
        .unwrap();
    assert_eq!(job.reveal(&a, 0, ok(1)).unwrap(), RevealEffect::Pending);
    assert_eq!(
        job.reveal(&liar, 0, lie).unwrap(),
        RevealEffect::MoreReplicas { wanted: 3 }
    );
    assert_eq!(job.assign(c, &peer(0), &rep, 0), Some(0));
    assert_eq!(
        run(&mut job, c, 0, &ok(1)).unwrap(),
        RevealEffect::Decided {
            credited: vec![a, c],
            faulty: vec![liar]
        }
    );
}

#[test]
fn agreed_errors_fail_the_unit_and_exhausted_replicas_fail_it_too() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(2, 2, 2, 2));
    let (a, b) = (peer(1), peer(2));
    let fuel = Outcome::Err {
        error: RunFailure::OutOfFuel,
        fuel: 1000,
    };
    job.assign(a, &peer(0), &rep, 0);
    job.assign(b, &peer(0), &rep, 0);
    job.assign(a, &peer(0), &rep, 0);
    job.assign(b, &peer(0), &rep, 0);
    run(&mut job, a, 0, &fuel);
    run(&mut job, b, 0, &fuel);
    assert_eq!(
        job.reveal(&a, 0, fuel.clone()).unwrap(),
        RevealEffect::Decided {
            credited: vec![a, b],
            faulty: vec![]
        }
    );
    assert!(
        matches!(&job.units[0].state, UnitState::Failed { error, .. } if error == "out of fuel")
    );
    run(&mut job, a, 1, &ok(1));
    run(&mut job, b, 1, &ok(2));
    job.reveal(&a, 1, ok(1)).unwrap();
    assert!(
        matches!(&job.units[1].state, UnitState::Failed { error, .. } if error.contains("agreed"))
    );
    assert_eq!(job.status, JobStatus::Done);
}

#[test]
fn lost_and_late_replicas_are_reissued_but_committed_ones_stay() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(1, 2, 2, 4));
    let (a, b, c, d) = (peer(1), peer(2), peer(3), peer(4));
    job.assign(a, &peer(0), &rep, 0);
    job.assign(b, &peer(0), &rep, 0);
    job.commit(&a, 0, commitment(&ok(1).digest(), &a), 0)
        .unwrap();
    assert!(job.lost(&a).is_empty(), "a committed: it holds its result");
    assert_eq!(job.lost(&b), vec![0]);
    assert_eq!(job.assign(a, &peer(0), &rep, 10), None, "a holds a replica");
    // b never fixed an answer for the unit (an assignment lost on its way looks the same):
    // it may take it again, as one replica.
    assert_eq!(job.assign(b, &peer(0), &rep, 10), Some(0));
    assert_eq!(
        job.assign(b, &peer(0), &rep, 10),
        None,
        "one live replica each"
    );
    assert_eq!(job.assign(c, &peer(0), &rep, 10), None, "two live replicas");
    assert_eq!(job.next_expiry(), Some(1010));
    assert!(job.expire(1009).is_empty());
    assert_eq!(job.expire(1010), vec![(0, b)]);
    assert_eq!(job.assign(d, &peer(0), &rep, 1011), Some(0));
    let ack = job
        .commit(&d, 0, commitment(&ok(1).digest(), &d), 0)
        .unwrap();
    assert_eq!(
        ack,
        CommitAck {
            reveal: true,
            ask: vec![a],
            new: true
        }
    );
    assert_eq!(job.reveal(&a, 0, ok(1)).unwrap(), RevealEffect::Pending);
    assert!(matches!(
        job.reveal(&d, 0, ok(1)).unwrap(),
        RevealEffect::Decided { .. }
    ));
    assert_eq!(
        job.commit(&b, 0, [0; 32], 0),
        Err(Refusal::NotRunning(0)),
        "an expired replica cannot commit"
    );
}

#[test]
fn a_reissued_replica_is_the_one_its_worker_commits_and_reveals() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(1, 2, 2, 4));
    let (a, b) = (peer(1), peer(2));
    job.assign(a, &peer(0), &rep, 0);
    job.assign(b, &peer(0), &rep, 0);
    // b's first issue expires unseen (say the answer to its fetch was lost).
    assert_eq!(job.expire(1000), vec![(0, a), (0, b)]);
    assert_eq!(job.assign(a, &peer(0), &rep, 2000), Some(0));
    assert_eq!(job.assign(b, &peer(0), &rep, 2000), Some(0));
    job.progress(&b, 0, 2500).unwrap();
    assert_eq!(run(&mut job, a, 0, &ok(3)), None, "a waits for a quorum");
    assert_eq!(run(&mut job, b, 0, &ok(3)), Some(RevealEffect::Pending));
    assert!(matches!(
        job.reveal(&a, 0, ok(3)).unwrap(),
        RevealEffect::Decided { .. }
    ));
    assert!(matches!(job.units[0].state, UnitState::Accepted { .. }));
}

#[test]
fn excluded_workers_get_nothing() {
    let mut job = Job::new(spec(1, 2, 2, 4));
    let bad = Reputation {
        faults: MAX_FAULTS,
        ..Default::default()
    };
    assert_eq!(job.assign(peer(1), &peer(0), &bad, 0), None);
    assert_eq!(
        job.assign(peer(1), &peer(0), &Reputation::default(), 0),
        Some(0)
    );
}

proptest! {
    /// Whatever cheaters commit and reveal, in any order and however many of a unit's replicas
    /// they hold, no unit is ever accepted with a wrong result and no cheater is credited, as
    /// long as they do not collude on one wrong answer (each lies its own way; colluders are
    /// answered by a larger quorum).
    #[test]
    fn cheaters_never_get_a_wrong_result_accepted(
        units in 1usize..6,
        replicas in 2u8..4,
        // per assignment: (is cheater, how it cheats: 0 lie, 1 copy the honest commitment and
        // lie, 2 commit to a guess then reveal the honest outcome, 3 copy the honest commitment
        // and reveal the honest outcome)
        behaviour in proptest::collection::vec((any::<bool>(), 0u8..4), 64),
        order in proptest::collection::vec(any::<u16>(), 64),
    ) {
        let quorum = replicas / 2 + 1;
        let mut job = Job::new(spec(units, replicas, quorum, 16));
        let rep = Reputation::default();
        let truth = ok(0);
        let mut cheaters = std::collections::HashSet::new();
        let mut n = 1u8;
        let mut b = behaviour.iter().cycle();
        let mut o = order.iter().cycle();
        let mut pending: Vec<(PeerId, u32, Outcome)> = Vec::new();
        for _round in 0..200 {
            if job.status != JobStatus::Running {
                break;
            }
            // A new worker takes a replica (cheaters are at most a minority: every other one).
            let w = peer(n);
            n = n.wrapping_add(1).max(1);
            let (cheat, how) = *b.next().unwrap();
            if let Some(unit) = job.assign(w, &peer(0), &rep, 0) {
                let outcome = if !cheat || how >= 2 { truth.clone() } else { ok(n) };
                if cheat {
                    cheaters.insert(w);
                }
                let c = match (cheat, how) {
                    (false, _) | (true, 0) => commitment(&outcome.digest(), &w),
                    (true, 2) => commitment(&ok(n).digest(), &w),
                    _ => commitment(&truth.digest(), &peer(254)),
                };
                job.commit(&w, unit, c, 0).unwrap();
                pending.push((w, unit, outcome));
            }
            // Some pending reveal goes through, in random order.
            if !pending.is_empty() {
                let i = *o.next().unwrap() as usize % pending.len();
                let (w, unit, outcome) = pending[i].clone();
                match job.reveal(&w, unit, outcome) {
                    Ok(RevealEffect::Decided { credited, .. }) => {
                        for c in credited {
                            prop_assert!(!cheaters.contains(&c), "a cheater was credited");
                        }
                        pending.swap_remove(i);
                    }
                    Ok(_) => { pending.swap_remove(i); }
                    Err(Refusal::TooEarly(_)) => {}
                    Err(e) => prop_assert!(false, "unexpected refusal {e}"),
                }
            }
        }
        for u in &job.units {
            if let UnitState::Accepted { digest, .. } = &u.state {
                prop_assert_eq!(*digest, truth.digest());
            }
        }
    }
}

#[test]
fn a_replica_that_commits_and_never_reveals_cannot_hold_the_unit() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(1, 2, 2, 4));
    let (silent, a, b) = (peer(1), peer(2), peer(3));
    job.assign(silent, &peer(0), &rep, 0);
    job.assign(a, &peer(0), &rep, 0);
    job.commit(&silent, 0, [7; 32], 0).unwrap();
    job.commit(&a, 0, commitment(&ok(1).digest(), &a), 100)
        .unwrap();
    job.reveal(&a, 0, ok(1)).unwrap();
    assert_eq!(job.next_expiry(), Some(100 + REVEAL_GRACE_MS));
    // A restart gives it the grace again from then.
    job.resumed(5_000);
    assert!(job.expire(100 + REVEAL_GRACE_MS).is_empty());
    assert_eq!(job.expire(5_000 + REVEAL_GRACE_MS), vec![(0, silent)]);
    assert_eq!(
        job.assign(silent, &peer(0), &rep, 0),
        None,
        "it committed once: never issued the unit again"
    );
    assert_eq!(job.assign(b, &peer(0), &rep, 0), Some(0));
    assert!(matches!(
        run(&mut job, b, 0, &ok(1)).unwrap(),
        RevealEffect::Decided { .. }
    ));
}

#[test]
fn a_running_replica_without_signs_of_life_is_issued_again() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(1, 1, 1, 2));
    let (quiet, busy) = (peer(1), peer(2));
    job.assign(quiet, &peer(0), &rep, 0);
    assert_eq!(job.next_expiry(), Some(LIVENESS_MS.min(1000)));
    // spec's lease is 1000 ms; make it long to see liveness alone.
    job.spec.lease_ms = 10 * LIVENESS_MS;
    job.units[0].replicas[0].lease_until_ms = 10 * LIVENESS_MS;
    job.progress(&quiet, 0, 30_000).unwrap();
    assert!(job.expire(LIVENESS_MS).is_empty(), "progress kept it alive");
    assert_eq!(job.expire(30_000 + LIVENESS_MS), vec![(0, quiet)]);
    assert_eq!(job.assign(busy, &peer(0), &rep, 100_000), Some(0));
    assert_eq!(
        job.progress(&quiet, 0, 100_000),
        Err(Refusal::NotRunning(0))
    );
}

#[test]
fn an_honest_reveal_is_not_penalised_when_a_copier_drops_out() {
    let (honest, copier, third) = (peer(1), peer(2), peer(3));
    let mut job = Job::new(spec(1, 2, 2, 5));
    let rep = Reputation::default();
    job.assign(honest, &peer(0), &rep, 0);
    job.assign(copier, &peer(0), &rep, 0);
    job.commit(&honest, 0, commitment(&ok(5).digest(), &honest), 1_000)
        .unwrap();
    job.commit(&copier, 0, commitment(&ok(6).digest(), &copier), 2_000)
        .unwrap();
    assert_eq!(
        job.reveal(&copier, 0, ok(5)).unwrap(),
        RevealEffect::CommitmentMismatch
    );
    // Below quorum again: the honest worker waits, and is not counted late for it.
    assert_eq!(job.reveal(&honest, 0, ok(5)), Err(Refusal::TooEarly(0)));
    assert!(job.expire(2_000 + REVEAL_GRACE_MS).is_empty());
    assert_eq!(job.assign(third, &peer(0), &rep, 3_000), Some(0));
    let ack = job
        .commit(&third, 0, commitment(&ok(5).digest(), &third), 4_000)
        .unwrap();
    assert_eq!(
        ack,
        CommitAck {
            reveal: true,
            ask: vec![honest],
            new: true
        }
    );
    assert_eq!(job.reveal(&third, 0, ok(5)).unwrap(), RevealEffect::Pending);
    assert!(matches!(
        job.reveal(&honest, 0, ok(5)).unwrap(),
        RevealEffect::Decided { .. }
    ));
}

#[test]
fn a_worker_that_vanishes_with_two_units_misses_once() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(2, 1, 1, 2));
    let w = peer(1);
    job.assign(w, &peer(0), &rep, 0);
    job.assign(w, &peer(0), &rep, 0);
    assert_eq!(job.lost(&w).len(), 2);
    assert_eq!(job.misses.get(&w), Some(&1));
}

#[test]
fn a_late_replica_that_agrees_with_an_agreed_error_is_not_faulty_and_units_nobody_finishes_fail() {
    let rep = Reputation::default();
    let mut job = Job::new(spec(2, 3, 2, 3));
    let (a, b, c) = (peer(1), peer(2), peer(3));
    let fuel = Outcome::Err {
        error: RunFailure::OutOfFuel,
        fuel: 1000,
    };
    for w in [a, b, c] {
        job.assign(w, &peer(0), &rep, 0);
    }
    for w in [a, b, c] {
        job.commit(&w, 0, commitment(&fuel.digest(), &w), 0)
            .unwrap();
    }
    job.reveal(&a, 0, fuel.clone()).unwrap();
    assert!(matches!(
        job.reveal(&b, 0, fuel.clone()).unwrap(),
        RevealEffect::Decided { .. }
    ));
    assert_eq!(
        job.reveal(&c, 0, fuel.clone()).unwrap(),
        RevealEffect::Decided {
            credited: vec![c],
            faulty: vec![]
        }
    );
    // Unit 1: issued and lost over and over, it fails instead of keeping the job open.
    let mut n = 10u8;
    loop {
        let w = peer(n);
        n += 1;
        match job.assign(w, &peer(0), &rep, 0) {
            Some(1) => {
                job.lost(&w);
            }
            None => break,
            Some(u) => panic!("unexpected unit {u}"),
        }
        assert!(n < 100);
    }
    assert!(
        matches!(&job.units[1].state, UnitState::Failed { error, .. } if error.contains("no worker finished"))
    );
    assert_eq!(job.units[1].replicas.len(), MAX_ISSUES_PER_REPLICA * 3);
    assert_eq!(job.status, JobStatus::Done);
    assert_eq!(job.running_of(&peer(10)), 0);
}

#[test]
fn spread_assignment_separates_consecutive_identities() {
    // With random entropy two fresh identities asking one after the other land on the same
    // unit about 1 in SPREAD times, instead of always.
    let rep = Reputation::default();
    let mut same = 0;
    for round in 0..64u64 {
        let mut job = Job::new(spec(40, 2, 2, 4));
        let e1 = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7;
        let e2 = round.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 11;
        let a = job.assign_spread(peer(1), &peer(0), &rep, 0, e1).unwrap();
        let b = job.assign_spread(peer(2), &peer(0), &rep, 0, e2).unwrap();
        same += usize::from(a == b);
    }
    assert!(same < 16, "{same} of 64 pairs shared a unit");
    // Entropy 0 is the plain order.
    let mut job = Job::new(spec(3, 2, 2, 4));
    assert_eq!(job.assign(peer(1), &peer(0), &rep, 0), Some(0));
}
