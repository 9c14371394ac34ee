//! The blocking client row (issue 21): `peerwire_client::blocking` against the plain peerwire
//! server, 64 B round trips made on the calling thread (it writes the request and reads the
//! answer itself; no runtime is involved in a call). The goal: p50 within 1.25x of `raw`,
//! same-cpu.

use std::time::{Duration, Instant};

use bytes::Bytes;
use peerwire_client::Client;

use crate::measure::{Figures, Params, Target, check_echo};

/// Round-trip latency of `size`-byte echoes through one blocking client.
pub(crate) fn rtt(t: &Target, size: usize, p: &Params) -> anyhow::Result<Figures> {
    let client = Client::builder(&t.socket)
        .name("bench-blocking")
        .namespace("bench", &[1])
        .connect_blocking()?;
    let msg = Bytes::from(vec![7u8; size]);
    let mut samples = Vec::with_capacity(p.rtt);
    for i in 0..p.rtt_warm + p.rtt {
        let start = Instant::now();
        let back = client.raw_call("bench.Echo", msg.clone(), Duration::from_secs(30))?;
        let took = start.elapsed();
        check_echo(msg.len(), back.len())?;
        if i >= p.rtt_warm {
            samples.push(took);
        }
    }
    client.close();
    Ok(Figures::latency(samples))
}
