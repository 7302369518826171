//! The demo's field devices: simulated pumps served as Modbus TCP units on loopback, so
//! `tidegate demo` exercises the real client path (connection, read plan, decoding,
//! deadlines). Each unit id 1..=N is one pump, with this register map:
//!
//! | table | address | type | value |
//! |---|---|---|---|
//! | holding | 0–1 | f32 ABCD | flow_m3h |
//! | holding | 2–3 | f32 ABCD | pressure_bar |
//! | holding | 4–5 | f32 ABCD | temperature_c |
//! | holding | 6–7 | f32 ABCD | vibration_mm_s |
//! | input | 0 | u16 | rpm |
//! | input | 1 | u16, ×0.01 | current_a |
//! | discrete | 0 | bool | running |
//! | holding | 100–103 | string | model ("TG-PUMP1") |
//!
//! `config/examples/demo.toml` holds this map as the `pump` profile. About once in 500
//! requests a unit answers "server device busy" (exception 06), so the
//! demo shows how a bad-quality value looks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::sources::sim::Pump;

struct Plant {
    pumps: Vec<Pump>,
    rng: fastrand::Rng,
}

#[derive(Clone)]
struct PlantService {
    plant: Arc<Mutex<Plant>>,
}

impl PlantService {
    fn answer(&self, request: SlaveRequest<'static>) -> Result<Response, ExceptionCode> {
        let mut plant = self.plant.lock().unwrap_or_else(|e| e.into_inner());
        let unit = usize::from(request.slave);
        if unit == 0 || unit > plant.pumps.len() {
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        if plant.rng.u32(0..500) == 0 {
            return Err(ExceptionCode::ServerDeviceBusy);
        }
        let pump = &plant.pumps[unit - 1];
        let mut holding = [0u16; 104];
        for (i, value) in [
            pump.flow_m3h,
            pump.pressure_bar,
            pump.temperature_c,
            pump.vibration_mm_s,
        ]
        .into_iter()
        .enumerate()
        {
            let bits = (value as f32).to_bits();
            holding[i * 2] = (bits >> 16) as u16;
            holding[i * 2 + 1] = bits as u16;
        }
        for (i, pair) in b"TG-PUMP1".chunks(2).enumerate() {
            holding[100 + i] = u16::from_be_bytes([pair[0], pair[1]]);
        }
        let input = [pump.rpm, (pump.current_a * 100.0).round() as u16];
        let discrete = [pump.running];
        let slice = |table: &[u16], addr: u16, count: u16| -> Result<Vec<u16>, ExceptionCode> {
            let (a, n) = (usize::from(addr), usize::from(count));
            table
                .get(a..a + n)
                .map(<[u16]>::to_vec)
                .ok_or(ExceptionCode::IllegalDataAddress)
        };
        match request.request {
            Request::ReadHoldingRegisters(addr, count) => {
                slice(&holding, addr, count).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(addr, count) => {
                slice(&input, addr, count).map(Response::ReadInputRegisters)
            }
            Request::ReadDiscreteInputs(addr, count) => {
                let (a, n) = (usize::from(addr), usize::from(count));
                discrete
                    .get(a..a + n)
                    .map(|bits| Response::ReadDiscreteInputs(bits.to_vec()))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl tokio_modbus::server::Service for PlantService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        std::future::ready(self.answer(request))
    }
}

/// Starts `pumps` simulated pumps on 127.0.0.1 (a free port); they evolve once a second
/// until `shutdown`. Returns the address to poll.
pub async fn serve(
    pumps: usize,
    seed: u64,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let pumps: Vec<Pump> = (0..pumps).map(|i| Pump::new(i, &mut rng)).collect();
    let plant = Arc::new(Mutex::new(Plant { pumps, rng }));
    let service = PlantService {
        plant: plant.clone(),
    };

    let evolve = shutdown.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = evolve.cancelled() => break,
            }
            let mut plant = plant.lock().unwrap_or_else(|e| e.into_inner());
            let Plant { pumps, rng } = &mut *plant;
            for pump in pumps.iter_mut() {
                pump.step(rng, 0.01);
            }
        }
    });
    let server = Server::new(listener);
    tokio::spawn(async move {
        let on_connected = move |stream, _peer| {
            let service = service.clone();
            async move { Ok(Some((service, stream))) }
        };
        let _ = server
            .serve_until(
                &on_connected,
                |e| log::debug!("simulated plant: {e}"),
                shutdown.cancelled_owned(),
            )
            .await;
    });
    Ok(address)
}
