//! `agora`: run a node (`agora up`), talk to a running node, run a local devnet.
//!
//! Exit codes: 0 success, 1 error, 2 usage error (clap's own).

mod chat;
mod client;
mod contract;
mod dashboard;
mod devnet;
mod docs;
mod files;
mod grid;
mod ledger;
mod output;
mod up;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "Agora: a peer-to-peer node. Run one with `agora up`, then talk to it with the other commands.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node in the foreground (stop it with Ctrl-C or SIGTERM).
    Up(up::UpArgs),
    /// This node's peer id, listen addresses, agent version and NAT status.
    Id(ClientArgs),
    /// Connected peers with address, latency, protocols and direction.
    Peers(ClientArgs),
    /// Connect to a peer by multiaddr, or by bare peer id (found through the DHT).
    Connect {
        /// `/ip4/…/tcp/…/p2p/<id>` or a peer id.
        target: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Close the connections to a peer.
    Disconnect {
        peer: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Uptime, peers, routing table, bandwidth and storage.
    Status(ClientArgs),
    /// Share a file or directory: hash it, keep serving it, print its hash and a ticket.
    Share {
        path: PathBuf,
        /// Keep it even under storage pressure (shares are never evicted anyway).
        #[arg(long)]
        pin: bool,
        /// Copy the data into the node's store instead of serving it from where it is.
        #[arg(long)]
        copy: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Download by hash or ticket from every provider at once, verified as it streams.
    Get {
        /// BLAKE3 hash (hex) or ticket (agora1…).
        target: String,
        /// Where to put the file or directory.
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Find files by name across the network (all words must match).
    Search {
        #[arg(required = true)]
        words: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What this node shares, pins and caches.
    Files(ClientArgs),
    /// Stop sharing a blob (your file itself is left alone).
    Unshare {
        hash: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Keep a downloaded blob for good.
    Pin {
        hash: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a one-time login link to the node's web dashboard (and open it in a browser).
    Dashboard {
        /// Only print the link; do not start a browser.
        #[arg(long)]
        no_open: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start N nodes on loopback, connected to one another, until Ctrl-C.
    Devnet(devnet::DevnetArgs),
    /// Your signed profile (nickname, status, about), or a peer's.
    #[command(subcommand)]
    Profile(chat::ProfileCmd),
    /// List contacts with presence, or add/remove one.
    Contacts {
        #[command(subcommand)]
        cmd: Option<chat::ContactsCmd>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a direct message (end-to-end signed; stored in the peer's mailbox if offline).
    Send {
        /// Peer id or contact name.
        to: String,
        /// The message; `-` reads it from standard input.
        #[arg(required = true)]
        text: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Received direct messages (listing marks them read).
    Inbox {
        /// Keep printing new messages as they arrive.
        #[arg(long, short)]
        follow: bool,
        /// Show sent messages and their delivery state instead.
        #[arg(long, conflicts_with = "all")]
        sent: bool,
        /// Show both directions.
        #[arg(long)]
        all: bool,
        /// Only unread messages.
        #[arg(long)]
        unread: bool,
        /// Only the conversation with this peer id or contact.
        #[arg(long)]
        peer: Option<String>,
        /// How many recent messages to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rooms: join, post, read, members, leave, list.
    #[command(subcommand)]
    Room(chat::RoomCmd),
    /// Interactive chat in a room or with a peer (/who, /quit).
    Chat {
        /// Room name, or peer id / contact name.
        target: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Known peers (contacts, room members) with presence and last seen.
    Who(ClientArgs),
    /// This node's ledger account (`ag…`).
    Account(ClientArgs),
    /// Balance, sequence number, reserve and issued currencies of an account (default: this
    /// node's).
    Balance {
        /// Account (`ag…`).
        #[arg(value_parser = ledger::parse_account)]
        account: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pay an account from this node's account; waits until the payment is final.
    ///
    /// AGR base units without --send-max are a plain transfer. An issued amount
    /// (`AMOUNT/CUR/ISSUER`) goes through its issuer; with --send-max in another currency it
    /// goes through the order books (bridged through AGR when that is cheaper).
    Pay {
        /// Recipient account (`ag…`).
        #[arg(value_parser = ledger::parse_account)]
        account: String,
        /// What arrives: whole AGR base units, or `AMOUNT/CUR/ISSUER` (up to 9 decimals).
        #[arg(value_parser = ledger::parse_pay_amount)]
        amount: ledger::PayAmount,
        /// The most to spend, in the currency to spend: `AMOUNT/CUR/ISSUER` or AGR base units.
        #[arg(long, value_name = "AMOUNT", value_parser = ledger::parse_market_amount)]
        send_max: Option<agora_ledger::Amount>,
        /// Deliver what --send-max buys when it cannot buy all of AMOUNT.
        #[arg(long)]
        partial: bool,
        /// A note stored with the payment (up to 256 bytes; plain AGR transfers only).
        #[arg(long)]
        memo: Option<String>,
        /// Fee to offer (burned); default: the ledger's minimum.
        #[arg(long)]
        fee: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A finalized transaction by hash.
    Tx {
        hash: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The ledger this node follows: status, history, committee changes (approve, change), and
    /// the currency market (trust, issuer, authorize, lines, offer, offers, book, balance).
    #[command(subcommand)]
    Ledger(ledger::LedgerCmd),
    /// Contracts on the ledger: deploy a wasm module, call and query its methods, show it,
    /// list or follow its events.
    #[command(subcommand)]
    Contract(contract::ContractCmd),
    /// Grid computing: run WASI jobs on peers' spare CPU; jobs, results, workers.
    #[command(subcommand)]
    Grid(grid::GridCmd),
    /// Groupware spaces: create, list, show, members, invite, join, remove, role, leave.
    #[command(subcommand)]
    Space(docs::SpaceCmd),
    /// Documents of a space (notes, task lists, threads, forms): new, show, edit, history.
    #[command(subcommand)]
    Doc(docs::DocCmd),
    /// Tasks in task-list documents: add, start, done, assign, list.
    #[command(subcommand)]
    Task(docs::TaskCmd),
}

/// How client commands find the node.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Data directory of the node to talk to (its api.json and api.token are read).
    #[arg(long, env = "AGORA_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// API address (`host:port`) of the node; overrides the data directory's api.json.
    #[arg(long, env = "AGORA_API")]
    pub api: Option<String>,
    /// API token; by default read from the data directory.
    #[arg(long, env = "AGORA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `$HOME/.agora`, or `./.agora` without a home directory.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".agora")
}

/// glibc's allocator, told to keep what a transfer frees for the next allocations.
///
/// By default glibc hands the top of its heap back to the kernel once 128 KiB of it are free,
/// and serves blocks from 128 KiB up (moving with use) with `mmap` of their own; a transfer
/// that allocates and frees a muxer frame, a read buffer or a batch every few microseconds
/// then page-faults the same memory in again and again, and every `munmap` interrupts the
/// other cores to flush their TLBs. Here blocks up to 32 MiB come from the heap and the heap
/// keeps up to 64 MiB free at its top. Measured, interleaved 1 GiB gets: 1522 against 1310
/// MiB/s, downloader 60 against 73 CPU ticks per GiB; the ledger's bench moved from 22,000 to
/// 24,500-25,700 transfers/s. (mimalloc gave the get a similar gain but cost the ledger's bench
/// a third of its transfers/s.) Called before any other thread starts.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up(_) | Command::Devnet(_)) {
        // A client command piped into `head` ends quietly when the pipe closes, as Unix tools
        // do, instead of panicking on the failed print. (Sockets are unaffected: Rust sends
        // with MSG_NOSIGNAL. The daemons keep SIGPIPE ignored.)
        // SAFETY: setting a signal's disposition to its default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Devnet(args) => devnet::run(args),
        Command::Id(c) => client::id(&c),
        Command::Peers(c) => client::peers(&c),
        Command::Connect { target, client } => client::connect(&client, &target),
        Command::Disconnect { peer, client } => client::disconnect(&client, &peer),
        Command::Status(c) => client::status(&c),
        Command::Share {
            path,
            pin,
            copy,
            client,
        } => files::share(&client, &path, pin, copy),
        Command::Get {
            target,
            out,
            client,
        } => files::get(&client, &target, &out),
        Command::Files(c) => files::list(&c),
        Command::Search { words, client } => files::search(&client, &words),
        Command::Unshare { hash, client } => files::unshare(&client, &hash),
        Command::Pin { hash, client } => files::pin(&client, &hash),
        Command::Dashboard { no_open, client } => dashboard::run(&client, no_open),
        Command::Profile(cmd) => chat::profile(cmd),
        Command::Contacts { cmd, client } => chat::contacts(cmd, &client),
        Command::Send { to, text, client } => chat::send(&client, &to, &text),
        Command::Inbox {
            follow,
            sent,
            all,
            unread,
            peer,
            limit,
            client,
        } => chat::inbox(
            &client,
            chat::InboxArgs {
                follow,
                sent,
                all,
                unread,
                peer,
                limit,
            },
        ),
        Command::Room(cmd) => chat::room(cmd),
        Command::Chat { target, client } => chat::interactive(&client, &target),
        Command::Who(c) => chat::who(&c),
        Command::Account(c) => ledger::account(&c),
        Command::Balance { account, client } => ledger::balance(&client, account.as_deref()),
        Command::Pay {
            account,
            amount,
            send_max,
            partial,
            memo,
            fee,
            client,
        } => ledger::pay(&client, &account, amount, send_max, partial, memo, fee),
        Command::Tx { hash, client } => ledger::tx(&client, &hash),
        Command::Ledger(cmd) => ledger::run(cmd),
        Command::Contract(cmd) => contract::run(cmd),
        Command::Grid(cmd) => grid::run(cmd),
        Command::Space(cmd) => docs::space(cmd),
        Command::Doc(cmd) => docs::doc(cmd),
        Command::Task(cmd) => docs::task(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
