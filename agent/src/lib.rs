//! The augur agent: collects this host's telemetry and its workloads', keeps a durable history,
//! predicts failures with the models, gossips health over the mesh, and serves the local API.

pub mod accept;
pub mod agent;
pub mod api;
pub mod cli;
pub mod collect;
pub mod config;
pub mod demo;
pub mod eval;
pub mod federation;
pub mod files;
pub mod fleet;
pub mod history;
pub mod ingest;
pub mod logging;
pub mod migrate;
pub mod models;
pub mod net;
pub mod predict;
pub mod replay;
pub mod sample;
pub mod scores;
pub mod services;
pub mod stats;
pub mod systemd;
