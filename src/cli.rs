//! The command line: `run`, `check`, `demo`. Each command returns an exit code; the
//! codes are part of the interface (systemd's `RestartPreventExitStatus=` uses 78).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::{self, AppError, RunLimits};
use crate::config::{self, SystemEnvironment};
use crate::ops::logging;

/// Exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    /// A run-time failure (store cannot be opened, signals unavailable...).
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// Bad configuration: fix the file, restarting will not help (sysexits EX_CONFIG).
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, Parser)]
#[command(
    name = "tidegate",
    version,
    about = "Edge gateway: field data in, durable store-and-forward out."
)]
pub struct Cli {
    /// Main config file; drop-ins are read from `conf.d/*.toml` beside it.
    #[arg(short, long, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon.
    Run,
    /// Validate the config and print the resolved plan. Exits 78 on a config error.
    Check,
    /// Run a simulated plant through the real pipeline: no broker or backend needed.
    Demo {
        /// Stop after this long (e.g. "30s"). Default: run until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Number of simulated pumps.
        #[arg(long, default_value_t = 4)]
        devices: usize,
        /// Time between samples of each pump.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        interval: Duration,
        /// NDJSON file the records are also written to.
        #[arg(long, default_value = "tidegate-demo.ndjson")]
        out: PathBuf,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    config::units::parse_duration(text)
}

pub fn main(cli: Cli) -> u8 {
    match cli.command {
        Command::Check => check(&cli.config),
        Command::Run => run(&cli.config),
        Command::Demo {
            duration,
            devices,
            interval,
            out,
        } => demo(duration, devices, interval, out),
    }
}

fn check(path: &std::path::Path) -> u8 {
    match config::load(path, &SystemEnvironment) {
        Ok(config) => {
            print!("{}", config.describe());
            println!("config OK");
            exit::OK
        }
        Err(e) => {
            eprintln!("{e}");
            exit::CONFIG
        }
    }
}

fn run(path: &std::path::Path) -> u8 {
    logging::init(log::LevelFilter::Info);
    let config = match config::load(path, &SystemEnvironment) {
        Ok(config) => config,
        Err(e) => {
            for line in e.to_string().lines() {
                log::error!("{line}");
            }
            return exit::CONFIG;
        }
    };
    logging::init(config.log.level);
    run_daemon(config, RunLimits::default())
}

fn run_daemon(config: config::Config, limits: RunLimits) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    match runtime.block_on(app::run(config, limits)) {
        Ok(_) => exit::OK,
        Err(AppError::Setup(message)) => {
            log::error!("{message}");
            exit::CONFIG
        }
        Err(e) => {
            log::error!("{e}");
            exit::FAILURE
        }
    }
}

/// The config `tidegate demo` runs on.
pub const DEMO_CONFIG: &str = include_str!("../config/examples/demo.toml");

fn demo(duration: Option<Duration>, devices: usize, interval: Duration, out: PathBuf) -> u8 {
    logging::init(log::LevelFilter::Info);
    let state_dir = std::env::temp_dir().join(format!("tidegate-demo-{}", std::process::id()));
    let out = std::path::absolute(&out).unwrap_or(out);
    let text = DEMO_CONFIG
        .replace("devices = 4", &format!("devices = {devices}"))
        .replace(
            "interval = \"1s\"",
            &format!(
                "interval = {}",
                toml_string(&config::units::format_duration(interval))
            ),
        );
    let drop_in = format!(
        "[gateway]\nstate_dir = {}\n\n[[uplinks.file]]\nname = \"ndjson\"\npath = {}\n",
        toml_string(&state_dir.display().to_string()),
        toml_string(&out.display().to_string())
    );
    let doc = config::ConfigDocument::from_sources(vec![
        (PathBuf::from("(demo config)"), text),
        (PathBuf::from("(demo overrides)"), drop_in),
    ]);
    let config = match doc
        .map_err(|d| config::ConfigError { diagnostics: d })
        .and_then(|doc| {
            config::validate(&doc, &SystemEnvironment)
                .map_err(|d| config::ConfigError { diagnostics: d })
        }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    eprintln!(
        "tidegate demo: {devices} simulated pumps every {}, store in {}, records to stdout and {}{}",
        config::units::format_duration(interval),
        state_dir.display(),
        out.display(),
        match duration {
            Some(d) => format!(", stopping after {}", config::units::format_duration(d)),
            None => ", Ctrl-C to stop".to_string(),
        }
    );
    let code = run_daemon(config, RunLimits { duration });
    let _ = std::fs::remove_dir_all(&state_dir);
    if code == exit::OK {
        eprintln!("tidegate demo: done; records are in {}", out.display());
    }
    code
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}
