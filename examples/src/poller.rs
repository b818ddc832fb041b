//! The engine thread's wait: one epoll set, registered once per socket,
//! waited on with a nanosecond timeout.
//!
//! At a 10 ms advertisement interval the engine thread wakes a hundred
//! times a second. `ppoll` walks and re-arms every descriptor on each call;
//! an epoll set keeps its registrations, so a wake-up costs only what is
//! ready. `epoll_pwait2` takes a `timespec`, so a deadline is not rounded
//! to the millisecond (`epoll_wait`'s unit). Kernels before 5.11 lack it:
//! then the wait rounds up to whole milliseconds.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

/// What a registered descriptor is ready for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    /// Data, a connection to accept, or end of stream.
    pub read: bool,
    /// Room to write, or a non-blocking connect finished.
    pub write: bool,
    /// An error or a hang-up (reading tells which).
    pub error: bool,
}

/// What to wait for on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Readable only.
    Read,
    /// Readable or writable.
    ReadWrite,
    /// Writable only (reading is paused).
    Write,
    /// Neither (reading is paused, nothing to write): errors and hang-ups
    /// only, which the kernel always reports.
    Nothing,
}

impl Interest {
    fn flags(self) -> EpollFlags {
        match self {
            Interest::Read => EpollFlags::EPOLLIN,
            Interest::ReadWrite => EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT,
            Interest::Write => EpollFlags::EPOLLOUT,
            Interest::Nothing => EpollFlags::empty(),
        }
    }
}

/// An epoll set and the buffer its waits fill.
pub struct Poller {
    epoll: Epoll,
    events: Vec<libc::epoll_event>,
    ready: usize,
    pwait2: bool,
}

impl Poller {
    /// A new, empty set.
    ///
    /// # Errors
    /// The kernel refused an epoll instance.
    pub fn new() -> std::io::Result<Poller> {
        Ok(Poller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 16],
            ready: 0,
            pwait2: true,
        })
    }

    /// Watches `fd` under `token` until it is closed (closing leaves the
    /// set).
    ///
    /// # Errors
    /// The kernel refused the registration.
    pub fn add(&self, fd: impl AsFd, token: u64, interest: Interest) -> std::io::Result<()> {
        Ok(self
            .epoll
            .add(fd, EpollEvent::new(interest.flags(), token))?)
    }

    /// Changes what `fd` is watched for.
    ///
    /// # Errors
    /// The kernel refused the change.
    pub fn modify(&self, fd: impl AsFd, token: u64, interest: Interest) -> std::io::Result<()> {
        let mut ev = EpollEvent::new(interest.flags(), token);
        Ok(self.epoll.modify(fd, &mut ev)?)
    }

    /// Waits until something is ready or `timeout` passes (`None`: no
    /// limit). An interrupted wait returns with nothing ready.
    ///
    /// # Errors
    /// The wait failed for another reason than a signal.
    pub fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.ready = 0;
        let max = i32::try_from(self.events.len()).unwrap_or(i32::MAX);
        let epfd = self.epoll.0.as_raw_fd();
        let mut n = -1;
        if self.pwait2 {
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(t.subsec_nanos()),
            });
            let ts_ptr = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
            // SAFETY: `events` is a live buffer of `max` entries that the
            // kernel fills; `ts_ptr` is null or points at `ts`, alive for
            // the call; a null signal mask leaves the mask alone.
            n = unsafe {
                libc::epoll_pwait2(
                    epfd,
                    self.events.as_mut_ptr(),
                    max,
                    ts_ptr,
                    std::ptr::null(),
                )
            };
            if n < 0 && Errno::last() == Errno::ENOSYS {
                self.pwait2 = false;
            }
        }
        if !self.pwait2 {
            let ms = timeout.map_or(-1, |t| {
                i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
            });
            // SAFETY: as above; `epoll_wait` takes a plain millisecond count.
            n = unsafe { libc::epoll_wait(epfd, self.events.as_mut_ptr(), max, ms) };
        }
        match Errno::result(n) {
            Ok(n) => {
                self.ready = usize::try_from(n).unwrap_or(0);
                Ok(())
            }
            Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// What the last wait found: each token with what it is ready for.
    pub fn ready(&self) -> impl Iterator<Item = (u64, Ready)> + '_ {
        self.events[..self.ready].iter().map(|e| {
            let f = EpollFlags::from_bits_truncate(i32::from_ne_bytes(e.events.to_ne_bytes()));
            (
                e.u64,
                Ready {
                    read: f.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP),
                    write: f.contains(EpollFlags::EPOLLOUT),
                    error: f.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP),
                },
            )
        })
    }
}
