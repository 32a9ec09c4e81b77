//! Notices changes to nf_tables made by anyone else (`nft flush ruleset`, a
//! firewall service restarting), so the engine restores the table at once
//! instead of on its next scheduled apply.
//!
//! A netlink socket subscribed to the NFNLGRP_NFTABLES multicast group gets
//! a message for every committed change. Messages caused by the daemon's own
//! batches carry the port id of its socket and are ignored; everything else
//! (including a lost-message overflow) asks the caller for a check, which is
//! a read-back and diff, so a spurious wake-up costs one read.

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;
use std::thread;

use libc::nlmsghdr;

use crate::netlink::{header, messages};

const NFNLGRP_NFTABLES: u32 = 7;

/// Starts the monitor thread. `own_portid` is the port id of the socket the
/// daemon applies through ([`crate::Nft::portid`]). `changed` is called for
/// every foreign change; when it returns false the thread ends.
pub fn spawn_monitor(
    own_portid: u32,
    mut changed: impl FnMut() -> bool + Send + 'static,
) -> io::Result<()> {
    // The socket is not Send, so it is opened on the monitor thread itself;
    // setup errors come back through `ready`.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
    thread::Builder::new()
        .name("nft-monitor".into())
        .spawn(move || {
            let sock = match open() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // SAFETY: the socket pointer is valid while `sock` lives.
            let fd: RawFd = unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) };
            let mut buf = vec![0u64; 1 << 14];
            loop {
                // SAFETY: the buffer is owned and its byte length is passed.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len() * 8, 0)
                };
                let foreign = if n < 0 {
                    // ENOBUFS: messages were lost; assume something changed.
                    io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS)
                } else {
                    // SAFETY: the kernel wrote n bytes into buf.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize)
                    };
                    any_foreign(bytes, own_portid)
                };
                if foreign && !changed() {
                    break;
                }
            }
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the monitor thread died")))
}

fn open() -> io::Result<mnl::Socket> {
    let sock = mnl::Socket::open(mnl::Bus::Netfilter)?;
    sock.bind(
        1 << (NFNLGRP_NFTABLES - 1),
        mnl::mnl_sys::MNL_SOCKET_AUTOPID,
    )?;
    // SAFETY: the socket pointer is valid while `sock` lives.
    let fd: RawFd = unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) };
    let big: libc::c_int = 4 << 20;
    // SAFETY: fd is a valid socket; the value is an int of the given size.
    // Failure only means the default buffer size, which ENOBUFS handling covers.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &big as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(sock)
}

/// True if any message in the buffer was caused by another socket, or if
/// the buffer holds a message that cannot be read (assume a change).
fn any_foreign(bytes: &[u8], own: u32) -> bool {
    let mut read = 0;
    for msg in messages(bytes) {
        if header(msg).nlmsg_pid != own {
            return true;
        }
        read += msg.len().div_ceil(4) * 4;
    }
    // `messages` stops at a header it cannot trust; less than a header
    // left over is only padding.
    bytes.len().saturating_sub(read) >= size_of::<nlmsghdr>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: u32, pid: u32) -> Vec<u8> {
        let mut m = vec![0u8; len.max(16).div_ceil(4) as usize * 4];
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m[12..16].copy_from_slice(&pid.to_ne_bytes());
        m
    }

    #[test]
    fn only_messages_of_other_sockets_or_unreadable_ones_count() {
        let own = 42;
        let mine = [msg(20, own), msg(17, own)].concat();
        assert!(!any_foreign(&mine, own));
        assert!(!any_foreign(&[mine.clone(), vec![0; 8]].concat(), own));
        assert!(any_foreign(&[mine.clone(), msg(16, 7)].concat(), own));
        // A length shorter than a header, or past the end of the buffer.
        assert!(any_foreign(&[mine.clone(), msg(8, own)].concat(), own));
        let mut long = msg(16, own);
        long[..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(any_foreign(&[mine, long].concat(), own));
        assert!(!any_foreign(&[], own));
    }
}
