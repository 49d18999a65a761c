//! Real-process integration tests: each starts `augur agent` processes on loopback and checks what a
//! user would see through the HTTP and gRPC APIs, the CLI, signals and restarts.

mod autonomy;
mod crash;
mod dashboard;
mod demo;
mod doctor;
mod federation;
mod grpc;
mod http;
mod layout;
mod lifecycle;
mod mesh;
mod migrate;
mod package;
mod predict;
mod services;
mod slow;
mod sources;
mod storage;
mod systemd;
mod traffic;
