//! Capturing on the bed's bridge with tcpdump, and reading the capture back
//! with our own reader (`examples::capture`, `vrrp_proto`): advertisements,
//! gratuitous ARPs, and the figures computed from them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use etherparse::{ArpOperation, NetSlice, SlicedPacket};
use examples::capture::Capture;
use pcap_file::DataLink;
use vrrp_proto::ChecksumMatch;

use super::bed::{Bed, Proc, wait_until};

/// tcpdump on the bed's bridge, writing a pcap; stopped (and flushed) by
/// [`Tcpdump::finish`] or on drop.
pub struct Tcpdump {
    proc: Proc,
    /// The capture file.
    pub file: PathBuf,
}

impl Tcpdump {
    /// Starts capturing every frame on `br0` in the bed's lan namespace and
    /// waits until tcpdump listens.
    #[track_caller]
    pub fn start(bed: &Bed, name: &str) -> Tcpdump {
        let file = bed.path(&format!("{name}.pcap"));
        let tcpdump = Path::new("tcpdump");
        let proc = bed.spawn(
            &bed.lan,
            &format!("{name}.tcpdump.log"),
            tcpdump,
            &[
                "-n",
                "-i",
                "br0",
                "-U",
                // Without it, libpcap hands packets over in blocks (up to
                // a second late) and a stop loses the last ones.
                "--immediate-mode",
                "-B",
                "8192",
                "-s",
                "512",
                "-w",
                file.to_str().expect("utf-8 path"),
            ],
        );
        let log = proc.log.clone();
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on"))
            }),
            "tcpdump did not start: {}",
            proc.log_text()
        );
        Tcpdump { proc, file }
    }

    /// Stops tcpdump with SIGINT, waits for it to flush, and returns the
    /// file.
    #[track_caller]
    pub fn finish(mut self) -> PathBuf {
        // Let the last frames reach the socket before the stop.
        std::thread::sleep(Duration::from_millis(100));
        self.proc.stop("INT", Duration::from_secs(10));
        self.file.clone()
    }
}

/// One VRRP advertisement seen on the wire.
#[derive(Debug, Clone)]
pub struct Advert {
    /// Capture frame number.
    pub frame: u64,
    /// Capture time since the epoch.
    pub t: Duration,
    /// IP source.
    pub src: IpAddr,
    /// TTL or hop limit.
    pub ttl: u8,
    /// 2 or 3.
    pub version: u8,
    /// Virtual router id.
    pub vrid: u8,
    /// Priority (0: the sender is stopping).
    pub priority: u8,
    /// Interval in centiseconds.
    pub interval_cs: u16,
    /// Which checksum form matched.
    pub checksum: ChecksumMatch,
}

/// A gratuitous ARP (or ARP announcement) seen on the wire.
#[derive(Debug, Clone)]
pub struct Garp {
    /// Capture time since the epoch.
    pub t: Duration,
    /// The address announced.
    pub ip: Ipv4Addr,
    /// The MAC it is announced at.
    pub mac: [u8; 6],
}

/// What a capture holds that the tests look at.
#[derive(Debug, Default)]
pub struct Wire {
    /// Every VRRP advertisement that passed our parser, in capture order.
    pub adverts: Vec<Advert>,
    /// VRRP packets our parser rejected: (frame, error).
    pub rejected: Vec<(u64, String)>,
    /// Gratuitous ARPs.
    pub garps: Vec<Garp>,
}

/// Reads a capture.
#[track_caller]
pub fn read(path: &Path) -> Wire {
    let mut wire = Wire::default();
    let capture = Capture::open(path).unwrap_or_else(|e| panic!("{e}"));
    for frame in capture {
        let frame = frame.unwrap_or_else(|e| panic!("{e}"));
        if frame.link == DataLink::ETHERNET
            && let Some(garp) = garp(&frame.data, frame.timestamp)
        {
            wire.garps.push(garp);
            continue;
        }
        let Some(ip) = frame.ip_datagram() else {
            continue;
        };
        if !examples::dump::is_vrrp(ip) {
            continue;
        }
        match vrrp_proto::parse_datagram(ip) {
            Ok(rx) => wire.adverts.push(Advert {
                frame: frame.number,
                t: frame.timestamp,
                src: rx.meta.src,
                ttl: rx.meta.ttl,
                version: rx.advertisement.version().number(),
                vrid: rx.advertisement.vrid().get(),
                priority: rx.advertisement.priority().get(),
                interval_cs: rx.advertisement.interval().as_centis(),
                checksum: rx.checksum,
            }),
            Err(e) => wire.rejected.push((frame.number, e.to_string())),
        }
    }
    wire
}

fn garp(data: &[u8], t: Duration) -> Option<Garp> {
    let packet = SlicedPacket::from_ethernet(data).ok()?;
    let Some(NetSlice::Arp(arp)) = packet.net else {
        return None;
    };
    let spa: [u8; 4] = arp.sender_protocol_addr().try_into().ok()?;
    let tpa: [u8; 4] = arp.target_protocol_addr().try_into().ok()?;
    let sha: [u8; 6] = arp.sender_hw_addr().try_into().ok()?;
    // Gratuitous: sender and target protocol address are the same, as a
    // request (keepalived, most routers) or a reply.
    let op = arp.operation();
    (spa == tpa && (op == ArpOperation::REQUEST || op == ArpOperation::REPLY)).then(|| Garp {
        t,
        ip: Ipv4Addr::from(spa),
        mac: sha,
    })
}

/// A takeover as seen on the wire.
#[derive(Debug, Clone)]
pub struct Takeover {
    /// The old Master's last advertisement.
    pub last_old: Advert,
    /// The new Master's first advertisement after it.
    pub first_new: Advert,
}

impl Takeover {
    /// The gap between the two.
    pub fn gap(&self) -> Duration {
        self.first_new.t.saturating_sub(self.last_old.t)
    }

    /// The gap in milliseconds.
    pub fn gap_ms(&self) -> f64 {
        self.gap().as_secs_f64() * 1000.0
    }
}

impl Wire {
    /// The advertisements of one virtual router.
    pub fn of_vrid(&self, vrid: u8) -> impl Iterator<Item = &Advert> {
        self.adverts.iter().filter(move |a| a.vrid == vrid)
    }

    /// The advertisements sent by `src`.
    pub fn sent_by(&self, src: IpAddr) -> impl Iterator<Item = &Advert> {
        self.adverts.iter().filter(move |a| a.src == src)
    }

    /// The last advertisement of `old` within `[from, to]`, then the first
    /// of `new` with a non-zero priority after it: the failover gap the
    /// RFC timers define.
    pub fn takeover(
        &self,
        vrid: u8,
        old: IpAddr,
        new: IpAddr,
        (from, to): (Duration, Duration),
    ) -> Option<Takeover> {
        let last_old = self
            .of_vrid(vrid)
            .filter(|a| a.src == old && a.t >= from && a.t <= to)
            .last()?
            .clone();
        let first_new = self
            .of_vrid(vrid)
            .find(|a| a.src == new && a.t > last_old.t && a.priority > 0)?
            .clone();
        Some(Takeover {
            last_old,
            first_new,
        })
    }

    /// How many times the advertising Master changed in `[from, to]`: each
    /// advertisement with a non-zero priority whose source differs from the
    /// one before counts once. A stable pair gives 0; one false failover
    /// and its recovery give 2.
    pub fn master_changes(&self, vrid: u8, from: Duration, to: Duration) -> usize {
        let mut current: Option<IpAddr> = None;
        let mut changes = 0;
        for a in self
            .of_vrid(vrid)
            .filter(|a| a.priority > 0 && a.t >= from && a.t <= to)
        {
            if current.is_some_and(|c| c != a.src) {
                changes += 1;
            }
            current = Some(a.src);
        }
        changes
    }

    /// The sources that advertised in `[from, to]` with a non-zero
    /// priority.
    pub fn advertisers(&self, vrid: u8, from: Duration, to: Duration) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .of_vrid(vrid)
            .filter(|a| a.priority > 0 && a.t >= from && a.t <= to)
            .map(|a| a.src)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The first gratuitous ARP for `ip` from `mac` at or after `after`.
    pub fn garp_after(&self, ip: Ipv4Addr, mac: [u8; 6], after: Duration) -> Option<&Garp> {
        self.garps
            .iter()
            .find(|g| g.ip == ip && g.mac == mac && g.t >= after)
    }
}

/// Wall-clock time now, comparable with capture timestamps.
pub fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
