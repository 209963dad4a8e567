//! Integration tests: real `agora` processes over real loopback sockets.

mod api;
mod chat;
mod cli;
mod common;
mod contract;
mod devnet;
mod docs;
mod files;
mod grid;
mod hostile;
mod interop;
mod ledger;
mod market;
mod network;
