//! Reading packet captures: pcap or pcapng (by pcap-file), link layers
//! stripped (by etherparse) down to the IP datagram.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Duration;

use etherparse::{EtherType, Ethernet2Slice, LinuxSllSlice, SingleVlanSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Neither a pcap nor a pcapng file.
    #[error("{path} is not a pcap or pcapng file")]
    NotACapture {
        /// The file.
        path: String,
    },
    /// The capture is damaged.
    #[error("{path}: corrupt capture: {source}")]
    Corrupt {
        /// The file.
        path: String,
        /// What the reader said.
        source: pcap_file::PcapError,
    },
}

/// One record of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// 1-based record number, as Wireshark numbers frames.
    pub number: u64,
    /// Capture timestamp since the Unix epoch.
    pub timestamp: Duration,
    /// Link type of the record's interface.
    pub link: DataLink,
    /// The bytes as captured.
    pub data: Vec<u8>,
}

impl Frame {
    /// The IP datagram in the frame, if its link layer is one we read
    /// (Ethernet with up to two VLAN tags, Linux cooked v1, raw IP) and it
    /// carries IPv4 or IPv6.
    #[must_use]
    pub fn ip_datagram(&self) -> Option<&[u8]> {
        ip_datagram(self.link, &self.data)
    }
}

/// The IP datagram in a link-layer frame.
#[must_use]
pub fn ip_datagram(link: DataLink, data: &[u8]) -> Option<&[u8]> {
    let (mut ether_type, mut payload) = match link {
        DataLink::ETHERNET => {
            let eth = Ethernet2Slice::from_slice_without_fcs(data).ok()?;
            let p = eth.payload();
            (p.ether_type, p.payload)
        }
        DataLink::LINUX_SLL => {
            let sll = LinuxSllSlice::from_slice(data).ok()?;
            let p = sll.payload();
            (EtherType(p.protocol_type.into()), p.payload)
        }
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            return match data.first()? >> 4 {
                4 | 6 => Some(data),
                _ => None,
            };
        }
        _ => return None,
    };
    for _ in 0..2 {
        if matches!(
            ether_type,
            EtherType::VLAN_TAGGED_FRAME
                | EtherType::PROVIDER_BRIDGING
                | EtherType::VLAN_DOUBLE_TAGGED_FRAME
        ) {
            let vlan = SingleVlanSlice::from_slice(payload).ok()?;
            let p = vlan.payload();
            (ether_type, payload) = (p.ether_type, p.payload);
        }
    }
    matches!(ether_type, EtherType::IPV4 | EtherType::IPV6).then_some(payload)
}

enum Inner {
    Pcap(PcapReader<BufReader<File>>),
    PcapNg(PcapNgReader<BufReader<File>>),
}

/// Frames of a pcap or pcapng file, in order.
pub struct Capture {
    path: String,
    inner: Inner,
    next_number: u64,
}

impl Capture {
    /// Opens a capture, telling pcap from pcapng by its magic number.
    ///
    /// # Errors
    /// [`CaptureError::Io`] if it cannot be read, [`CaptureError::NotACapture`]
    /// for another kind of file, [`CaptureError::Corrupt`] for a bad header.
    pub fn open(path: &Path) -> Result<Capture, CaptureError> {
        let name = path.display().to_string();
        let io = |source| CaptureError::Io {
            path: name.clone(),
            source,
        };
        let mut magic = [0u8; 4];
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    CaptureError::NotACapture { path: name.clone() }
                }
                _ => io(e),
            })?;
        let reader = BufReader::new(File::open(path).map_err(io)?);
        let corrupt = |source| CaptureError::Corrupt {
            path: name.clone(),
            source,
        };
        let inner = match u32::from_le_bytes(magic) {
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => {
                Inner::Pcap(PcapReader::new(reader).map_err(corrupt)?)
            }
            0x0a0d_0d0a => Inner::PcapNg(PcapNgReader::new(reader).map_err(corrupt)?),
            _ => return Err(CaptureError::NotACapture { path: name }),
        };
        Ok(Capture {
            path: name,
            inner,
            next_number: 1,
        })
    }

    /// The next frame, `None` at the end.
    ///
    /// # Errors
    /// [`CaptureError::Corrupt`] for a damaged record; the capture cannot
    /// be read past it.
    pub fn next_frame(&mut self) -> Option<Result<Frame, CaptureError>> {
        let corrupt = |source| CaptureError::Corrupt {
            path: self.path.clone(),
            source,
        };
        let frame = match &mut self.inner {
            Inner::Pcap(r) => {
                let link = r.header().datalink;
                match r.next_packet()? {
                    Ok(p) => (p.timestamp, link, p.data.into_owned()),
                    Err(e) => return Some(Err(corrupt(e))),
                }
            }
            Inner::PcapNg(r) => loop {
                let block = match r.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(corrupt(e))),
                };
                let (id, timestamp, data) = match block {
                    Block::EnhancedPacket(p) => (p.interface_id, p.timestamp, p.data.into_owned()),
                    Block::SimplePacket(p) => (0, Duration::ZERO, p.data.into_owned()),
                    Block::Packet(p) => (
                        u32::from(p.interface_id),
                        Duration::ZERO,
                        p.data.into_owned(),
                    ),
                    _ => continue,
                };
                let link = usize::try_from(id)
                    .ok()
                    .and_then(|i| r.interfaces().get(i))
                    .map_or(DataLink::Unknown(u32::MAX), |i| i.linktype);
                break (timestamp, link, data);
            },
        };
        let (timestamp, link, data) = frame;
        let number = self.next_number;
        self.next_number += 1;
        Some(Ok(Frame {
            number,
            timestamp,
            link,
            data,
        }))
    }
}

impl Iterator for Capture {
    type Item = Result<Frame, CaptureError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
    }
}
