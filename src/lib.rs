//! tessera: a telemetry tile server appliance.
//!
//! Data flows through the modules in this order: [`config`] and [`roots`]
//! (what to serve, on what storage), [`watch`] (changes on disk),
//! [`catalog`] (the SQLite index; [`mbtiles`] reads MBTiles files), [`cache`]
//! (open descriptors; [`archive`] finds tiles inside open PMTiles archives), [`http`] (the axum Router that produces every
//! response) and [`delivery`] (how the bytes travel). They build on leaves
//! that import nothing above them: [`names`], [`validators`], [`tile`],
//! [`logline`], [`pmtiles`], [`mime`], [`metrics`], [`logging`]. Imports run one way (the table in
//! `tests/layers.rs`); [`server`] wires everything together and [`systemd`]
//! speaks to the service manager. See ARCHITECTURE.md.

pub mod access;
pub mod archive;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod delivery;
pub mod doctor;
pub mod http;
pub mod invalidate;
pub mod logging;
pub mod logline;
pub mod mbtiles;
pub mod metrics;
pub mod mime;
pub mod names;
pub mod pmtiles;
pub mod roots;
pub mod server;
pub mod systemd;
pub mod tile;
pub mod tls;
pub mod validators;
pub mod watch;
