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
    /// Validate the config (and load every model) and print the resolved plan. Exits 78 on
    /// a config or model error.
    Check {
        /// Do not load the models (the service's pre-start check uses this, so that a bad
        /// model cannot keep the gateway from buffering data).
        #[arg(long)]
        skip_models: bool,
    },
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
    /// Commissioning: talk to a field device directly.
    #[command(subcommand)]
    Probe(Probe),
    /// Run recorded data (CSV) through the daemon's window and model code; print a score
    /// and a flag per row, and precision/recall/F1/FAR/MAR when a label column is named.
    Replay(ReplayArgs),
    /// Inspect or change the offline store (reading is safe while the daemon runs).
    #[command(subcommand)]
    Buffer(BufferCommand),
}

#[derive(Debug, clap::Args)]
pub struct StateDirArg {
    /// The state directory; default: `gateway.state_dir` of the config.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BufferCommand {
    /// Records buffered, per uplink still to send, dead letters, what was dropped.
    Stats {
        #[command(flatten)]
        dir: StateDirArg,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The next records an uplink will send, as NDJSON (priority lane first).
    Peek {
        #[command(flatten)]
        dir: StateDirArg,
        /// Whose cursor to start from; default: the only uplink, or every live record.
        #[arg(long)]
        uplink: Option<String>,
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        /// Show dead letters instead (tidegate must be stopped).
        #[arg(long)]
        dead_letters: bool,
    },
    /// Every record still to send (or every dead letter), as NDJSON.
    Export {
        #[command(flatten)]
        dir: StateDirArg,
        #[arg(long)]
        uplink: Option<String>,
        /// Export dead letters instead (tidegate must be stopped).
        #[arg(long)]
        dead_letters: bool,
        /// Output file; default: standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Send dead letters again, to the uplink that refused them (tidegate must be stopped).
    RequeueDeadLetters {
        #[command(flatten)]
        dir: StateDirArg,
        /// Only this uplink's dead letters.
        #[arg(long)]
        uplink: Option<String>,
    },
    /// Drop every record still to send, or every dead letter (tidegate must be stopped).
    Purge {
        #[command(flatten)]
        dir: StateDirArg,
        /// Drop the dead letters instead of the records.
        #[arg(long)]
        dead_letters: bool,
        /// Really do it: what is purged is gone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The CSV file; its header names the columns.
    csv: PathBuf,
    /// The ONNX model (its metadata names the channel columns).
    #[arg(long)]
    model: PathBuf,
    /// Column separator, e.g. ';'.
    #[arg(long, default_value = ",")]
    sep: char,
    /// Column with the timestamp (copied to the output).
    #[arg(long)]
    timestamp_column: Option<String>,
    /// Column with the device: each device gets its own window.
    #[arg(long)]
    device_column: Option<String>,
    /// Column with 0/1 labels: prints detection metrics.
    #[arg(long)]
    label_column: Option<String>,
    /// Data rows to ignore at the start.
    #[arg(long, default_value_t = 0)]
    skip_rows: usize,
    /// Rows before this one only fill the windows (no output, no metrics).
    #[arg(long, default_value_t = 0)]
    score_from: usize,
    /// Overrides the model's threshold.
    #[arg(long)]
    threshold: Option<f64>,
    /// Score every n-th window.
    #[arg(long, default_value_t = 1)]
    stride: usize,
    /// Per-row output file (CSV); "-" for stdout.
    #[arg(long, default_value = "-")]
    out: String,
    /// Draw the channels, the score and the labeled and flagged spans to an SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the confusion counts and metrics as JSON to this file.
    #[arg(long)]
    metrics_json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Probe {
    /// Read registers from a Modbus unit and print every decoding, or scan a line.
    Modbus(ProbeModbus),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("link").required(true).args(["tcp", "rtu"])))]
pub struct ProbeModbus {
    /// A Modbus TCP endpoint, HOST:PORT.
    #[arg(long)]
    tcp: Option<String>,
    /// A serial device, e.g. /dev/ttyUSB0.
    #[arg(long)]
    rtu: Option<PathBuf>,
    #[arg(long, default_value_t = 19200)]
    baud: u32,
    /// none | even | odd.
    #[arg(long, default_value = "even")]
    parity: String,
    #[arg(long, default_value_t = 8)]
    data_bits: u8,
    #[arg(long, default_value_t = 1)]
    stop_bits: u8,
    /// Unit (slave) id.
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// holding | input | coil | discrete. Implied by a notation address such as 40001.
    #[arg(long)]
    table: Option<String>,
    /// First address: 0-based, or the notation such as 40001.
    #[arg(long, default_value = "0")]
    address: String,
    /// Registers (or bits) to read.
    #[arg(long, default_value_t = 10)]
    count: u16,
    /// Deadline per request.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    timeout: Duration,
    /// List the unit ids that answer instead of reading registers.
    #[arg(long)]
    scan: bool,
    /// Unit ids to scan, e.g. 1-247.
    #[arg(long, default_value = "1-247")]
    units: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    config::units::parse_duration(text)
}

pub fn main(cli: Cli) -> u8 {
    // A panic is one ERROR line in the journal, not a backtrace spread over forty.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        if log::log_enabled!(log::Level::Error) {
            log::error!("internal error{location}: {message}");
        } else {
            eprintln!("internal error{location}: {message}");
        }
    }));
    match cli.command {
        Command::Check { skip_models } => check(&cli.config, skip_models),
        Command::Run => run(&cli.config),
        Command::Demo {
            duration,
            devices,
            interval,
            out,
        } => demo(duration, devices, interval, out),
        Command::Probe(Probe::Modbus(args)) => probe_modbus(args),
        Command::Replay(args) => replay(args),
        Command::Buffer(command) => buffer(&cli.config, command),
    }
}

/// The state directory: given on the command line, or the config's.
fn state_dir_of(config_path: &std::path::Path, arg: StateDirArg) -> Result<PathBuf, u8> {
    if let Some(dir) = arg.state_dir {
        return Ok(dir);
    }
    match config::load(config_path, &SystemEnvironment) {
        Ok(config) => Ok(config.gateway.state_dir),
        Err(e) => {
            eprintln!("{e}");
            eprintln!("(or name the state directory with --state-dir)");
            Err(exit::CONFIG)
        }
    }
}

fn buffer(config_path: &std::path::Path, command: BufferCommand) -> u8 {
    use crate::ops::buffer;
    let mut stdout = std::io::stdout().lock();
    let result = match command {
        BufferCommand::Stats { dir, json } => {
            state_dir_of(config_path, dir).map(|d| buffer::stats(&d, json, &mut stdout))
        }
        BufferCommand::Peek {
            dir,
            uplink,
            count,
            dead_letters,
        } => state_dir_of(config_path, dir).map(|d| {
            buffer::records(&d, uplink.as_deref(), dead_letters, count, &mut stdout).map(|_| ())
        }),
        BufferCommand::Export {
            dir,
            uplink,
            dead_letters,
            output,
        } => state_dir_of(config_path, dir).map(|d| {
            let mut file;
            let out: &mut dyn std::io::Write = match &output {
                Some(path) => match std::fs::File::create(path) {
                    Ok(f) => {
                        file = std::io::BufWriter::new(f);
                        &mut file
                    }
                    Err(e) => return Err(buffer::BufferError::Output(e)),
                },
                None => &mut stdout,
            };
            let n = buffer::records(&d, uplink.as_deref(), dead_letters, usize::MAX, out)?;
            out.flush()?;
            if let Some(path) = &output {
                eprintln!("exported {n} records to {}", path.display());
            }
            Ok(())
        }),
        BufferCommand::RequeueDeadLetters { dir, uplink } => {
            state_dir_of(config_path, dir).map(|d| {
                let n = buffer::requeue(&d, uplink.as_deref())?;
                println!("requeued {n} dead letters; they are sent first at the next start");
                Ok(())
            })
        }
        BufferCommand::Purge {
            dir,
            dead_letters,
            yes,
        } => state_dir_of(config_path, dir).map(|d| {
            if !yes {
                return Err(buffer::BufferError::Refused(
                    "purge drops data for good: add --yes to do it".into(),
                ));
            }
            let n = buffer::purge(&d, dead_letters)?;
            println!(
                "purged {n} {}",
                if dead_letters {
                    "dead letters"
                } else {
                    "records"
                }
            );
            Ok(())
        }),
    };
    match result {
        Err(code) => code,
        Ok(Ok(())) => exit::OK,
        Ok(Err(e)) => {
            eprintln!("tidegate buffer: {e}");
            exit::FAILURE
        }
    }
}

fn replay(args: ReplayArgs) -> u8 {
    use crate::pipeline::{contract::Overrides, model, replay};
    logging::init(log::LevelFilter::Warn);
    if !args.sep.is_ascii() || args.stride == 0 {
        eprintln!("--sep must be one ASCII character and --stride at least 1");
        return exit::USAGE;
    }
    let overrides = Overrides {
        threshold: args.threshold,
        ..Overrides::default()
    };
    let loaded = match model::load(&args.model, &overrides, "replay") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let options = replay::ReplayOptions {
        csv: args.csv.clone(),
        separator: args.sep as u8,
        skip_rows: args.skip_rows,
        score_from: args.score_from,
        timestamp_column: args.timestamp_column.clone(),
        device_column: args.device_column.clone(),
        label_column: args.label_column.clone(),
        stride: args.stride,
        bad_values: crate::pipeline::window::BadValues::Skip,
        progress: true,
    };
    let result = match replay::run(&loaded, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return exit::FAILURE;
        }
    };
    let written = if args.out == "-" {
        replay::write_rows(&result, &mut std::io::stdout().lock())
    } else {
        std::fs::File::create(&args.out)
            .map(std::io::BufWriter::new)
            .and_then(|mut f| {
                replay::write_rows(&result, &mut f).and_then(|()| std::io::Write::flush(&mut f))
            })
    };
    if let Err(e) = written {
        eprintln!("cannot write {}: {e}", args.out);
        return exit::FAILURE;
    }
    if let Some(plot) = &args.plot
        && let Err(e) = replay::write_plot(&result, plot)
    {
        eprintln!("cannot write {}: {e}", plot.display());
        return exit::FAILURE;
    }
    let scored = result.rows.iter().filter(|r| r.score.is_some()).count();
    let flagged = result
        .rows
        .iter()
        .filter(|r| r.score.is_some_and(|s| s > result.threshold))
        .count();
    eprintln!(
        "{}: {} rows, {scored} scored, {flagged} flagged (model {} {}, threshold {:.4})",
        args.csv.display(),
        result.rows.len(),
        loaded.contract.name,
        loaded.contract.version,
        result.threshold
    );
    if let Some(c) = result.confusion {
        eprintln!(
            "TP {} FP {} FN {} TN {}: precision {:.3} recall {:.3} F1 {:.3} FAR {:.2}% MAR {:.2}%",
            c.tp,
            c.fp,
            c.fn_,
            c.tn,
            c.precision(),
            c.recall(),
            c.f1(),
            c.far() * 100.0,
            c.mar() * 100.0
        );
        if let Some(path) = &args.metrics_json {
            let json = serde_json::json!({
                "tp": c.tp, "fp": c.fp, "fn": c.fn_, "tn": c.tn,
                "precision": c.precision(), "recall": c.recall(), "f1": c.f1(), "far": c.far(), "mar": c.mar(),
            });
            if let Err(e) = std::fs::write(path, json.to_string()) {
                eprintln!("cannot write {}: {e}", path.display());
                return exit::FAILURE;
            }
        }
    }
    exit::OK
}

fn probe_modbus(args: ProbeModbus) -> u8 {
    logging::init(log::LevelFilter::Warn);
    let link = match (&args.tcp, &args.rtu) {
        (Some(endpoint), _) => {
            let Some((host, port)) = endpoint
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            else {
                eprintln!("--tcp wants HOST:PORT, got \"{endpoint}\"");
                return exit::USAGE;
            };
            config::ModbusLink::Tcp {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
                connect_timeout: args.timeout.max(Duration::from_secs(1)),
            }
        }
        (None, Some(device)) => {
            let parity = match args.parity.as_str() {
                "none" => config::raw::Parity::None,
                "even" => config::raw::Parity::Even,
                "odd" => config::raw::Parity::Odd,
                other => {
                    eprintln!("--parity is none, even or odd, not \"{other}\"");
                    return exit::USAGE;
                }
            };
            config::ModbusLink::Rtu {
                device: device.clone(),
                baud: args.baud,
                parity,
                data_bits: args.data_bits,
                stop_bits: args.stop_bits,
                inter_request_delay: config::silent_interval(
                    args.baud,
                    args.data_bits,
                    parity,
                    args.stop_bits,
                ),
            }
        }
        (None, None) => unreachable!("clap requires --tcp or --rtu"),
    };
    let Some(rt) = runtime() else {
        return exit::FAILURE;
    };
    if args.scan {
        let Some((first, last)) = args
            .units
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?)))
            .filter(|(a, b)| a <= b)
        else {
            eprintln!("--units wants a range such as 1-247");
            return exit::USAGE;
        };
        print!(
            "{}",
            rt.block_on(crate::sources::modbus::probe::scan(
                link,
                first..=last,
                args.timeout
            ))
        );
        return exit::OK;
    }
    let (table, address) = match config::parse_address(&args.address, args.table.as_deref()) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("{e}");
            return exit::USAGE;
        }
    };
    let limit = if table.is_bits() { 2000 } else { 125 };
    if args.count == 0 || args.count > limit {
        eprintln!("--count must be 1 to {limit} for a {table}");
        return exit::USAGE;
    }
    match rt.block_on(crate::sources::modbus::probe::read_block(
        link,
        args.unit,
        table,
        address,
        args.count,
        args.timeout,
    )) {
        Ok(report) => {
            print!("{report}");
            exit::OK
        }
        Err(e) => {
            eprintln!("{e}");
            exit::FAILURE
        }
    }
}

fn check(path: &std::path::Path, skip_models: bool) -> u8 {
    match config::load(path, &SystemEnvironment) {
        Ok(config) => {
            print!("{}", config.describe());
            let mut failed = false;
            if !skip_models {
                for binding in &config.models {
                    match crate::pipeline::model::load(
                        &binding.path,
                        &binding.overrides,
                        &binding.name,
                    ) {
                        Ok(model) => {
                            let c = &model.contract;
                            println!(
                                "model \"{}\": {} {}, input {} = window {} × {} channels ({}), threshold {}, score {:?}, loaded in {} ms",
                                binding.name,
                                c.name,
                                c.version,
                                model.input_shape,
                                c.window,
                                c.channels.len(),
                                c.channels.join(", "),
                                c.threshold,
                                c.score,
                                model.load_time.as_millis()
                            );
                        }
                        Err(e) => {
                            eprintln!("model \"{}\": {e}", binding.name);
                            failed = true;
                        }
                    }
                }
            }
            if failed {
                return exit::CONFIG;
            }
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
    run_daemon(
        config,
        RunLimits {
            duration: None,
            config_path: Some(path.to_path_buf()),
        },
    )
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    runtime_with(0)
}

/// `worker_threads` 0: one per CPU core (tokio's default).
fn runtime_with(worker_threads: usize) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            None
        }
    }
}

fn exit_code(result: Result<std::sync::Arc<crate::ops::Stats>, AppError>) -> u8 {
    match result {
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

fn run_daemon(config: config::Config, limits: RunLimits) -> u8 {
    match runtime_with(config.gateway.worker_threads) {
        Some(rt) => {
            let code = exit_code(rt.block_on(app::run(config, limits)));
            // A call stuck in a blocking thread (a file on a hung mount) must not keep the
            // process from exiting: what is committed is on disk already.
            rt.shutdown_timeout(Duration::from_secs(2));
            code
        }
        None => exit::FAILURE,
    }
}

/// The config `tidegate demo` runs on.
pub const DEMO_CONFIG: &str = include_str!("../config/examples/demo.toml");
/// The bundled reference model, so that the demo runs from anywhere.
pub const DEMO_MODEL: &[u8] = include_bytes!("../models/pump-demo.onnx");

/// The embedded demo config, pointed at the simulated plant on `port`, with `devices`
/// pumps polled every `interval`, its store in `state_dir` and an NDJSON copy in `out`.
pub fn demo_config(
    port: u16,
    devices: usize,
    interval: Duration,
    state_dir: &std::path::Path,
    out: &std::path::Path,
) -> Result<config::Config, config::ConfigError> {
    let mut table: toml::Table =
        toml::from_str(DEMO_CONFIG).expect("the embedded demo config parses");
    let template = table["sources"]["modbus_tcp"][0]["devices"][0]
        .as_table()
        .cloned()
        .expect("the demo config has a device");
    let devices: Vec<toml::Value> = (1..=devices)
        .map(|i| {
            let mut device = template.clone();
            device.insert("name".into(), format!("pump-{i}").into());
            device.insert("unit".into(), (i as i64).into());
            device.insert(
                "poll_interval".into(),
                config::units::format_duration(interval).into(),
            );
            toml::Value::Table(device)
        })
        .collect();
    let plant = table["sources"]["modbus_tcp"][0]
        .as_table_mut()
        .expect("a table");
    plant.insert("port".into(), i64::from(port).into());
    plant.insert("devices".into(), toml::Value::Array(devices));
    table["gateway"]
        .as_table_mut()
        .expect("a table")
        .insert("state_dir".into(), state_dir.display().to_string().into());
    let model_path = state_dir.join("pump-demo.onnx");
    table["models"][0]
        .as_table_mut()
        .expect("a table")
        .insert("path".into(), model_path.display().to_string().into());
    let mut file = toml::Table::new();
    file.insert("name".into(), "ndjson".into());
    file.insert("path".into(), out.display().to_string().into());
    table["uplinks"].as_table_mut().expect("a table").insert(
        "file".into(),
        toml::Value::Array(vec![toml::Value::Table(file)]),
    );
    let text = toml::to_string(&table).expect("a TOML table serialises");
    config::from_str("(demo config)", &text, &SystemEnvironment)
}

fn demo(duration: Option<Duration>, devices: usize, interval: Duration, out: PathBuf) -> u8 {
    logging::init(log::LevelFilter::Info);
    if !(1..=247).contains(&devices) {
        eprintln!("--devices must be between 1 and 247 (Modbus unit ids)");
        return exit::USAGE;
    }
    let state_dir = std::env::temp_dir().join(format!("tidegate-demo-{}", std::process::id()));
    let out = std::path::absolute(&out).unwrap_or(out);
    let Some(rt) = runtime() else {
        return exit::FAILURE;
    };
    let code = rt.block_on(async {
        let plant_shutdown = tokio_util::sync::CancellationToken::new();
        let address = match crate::sources::modbus::sim::serve(devices, 7, plant_shutdown.clone()).await {
            Ok(address) => address,
            Err(e) => {
                log::error!("cannot start the simulated plant: {e}");
                return exit::FAILURE;
            }
        };
                if let Err(e) = std::fs::create_dir_all(&state_dir).and_then(|()| std::fs::write(state_dir.join("pump-demo.onnx"), DEMO_MODEL)) {
            log::error!("cannot prepare {}: {e}", state_dir.display());
            return exit::FAILURE;
        }
        let config = match demo_config(address.port(), devices, interval, &state_dir, &out) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{e}");
                return exit::CONFIG;
            }
        };
        eprintln!(
            "tidegate demo: {devices} simulated pumps (Modbus TCP units on {address}) polled every {}, \
             store in {}, records to stdout and {}{}",
            config::units::format_duration(interval),
            state_dir.display(),
            out.display(),
            match duration {
                Some(d) => format!(", stopping after {}", config::units::format_duration(d)),
                None => ", Ctrl-C to stop".to_string(),
            }
        );
        let code = exit_code(app::run(
            config,
            RunLimits {
                duration,
                config_path: None,
            },
        )
        .await);
        plant_shutdown.cancel();
        code
    });
    let _ = std::fs::remove_dir_all(&state_dir);
    if code == exit::OK {
        eprintln!("tidegate demo: done; records are in {}", out.display());
    }
    code
}
