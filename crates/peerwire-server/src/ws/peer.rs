//! Who is on the other end of a loopback TCP connection: TCP has no `SO_PEERCRED`, but the
//! kernel's socket diagnostics (`NETLINK_SOCK_DIAG`, `sock_diag(7)`) report the uid that owns
//! a socket. The server asks for the *peer's* socket by its exact 4-tuple (source = the peer's
//! address, destination = ours), which on loopback lives in the same network namespace.
//!
//! Through `netlink-sys` and `netlink-packet-sock-diag` (the rust-netlink crates): no `unsafe`
//! here.

use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

/// No cookie: the kernel matches the socket by its addresses and ports alone.
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// The uid owning the TCP socket whose local address is `peer` and whose remote address is
/// `local` (the other end of our connection from `peer` to `local`). An error when the kernel
/// does not know such a socket (the peer is gone, or not on this host) or cannot be asked.
pub(crate) fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<u32> {
    let family = match (peer, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => AF_INET6,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mixed address families",
            ));
        }
    };
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: peer.port(),
                destination_port: local.port(),
                source_address: peer.ip(),
                destination_address: local.ip(),
                interface_id: 0,
                cookie: NO_COOKIE,
            },
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut reply = vec![0u8; 8192];
    let n = socket.recv(&mut &mut reply[..], 0)?;
    let bytes = reply.get(..n).unwrap_or_default();
    let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
            let id = &r.header.socket_id;
            if id.source_address == peer.ip()
                && id.source_port == peer.port()
                && id.destination_address == local.ip()
                && id.destination_port == local.port()
            {
                Ok(r.header.uid)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "sock_diag answered about another socket",
                ))
            }
        }
        NetlinkPayload::Error(e) => Err(e.code.map_or_else(
            || io::Error::other("sock_diag error"),
            |c| io::Error::from_raw_os_error(-c.get()),
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "sock_diag knows no such socket",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_the_uid_of_the_other_end_of_a_loopback_connection() {
        for ip in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(ip) else {
                continue; // no IPv6 on this host
            };
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().unwrap();
            let uid = tcp_peer_uid(server.local_addr().unwrap(), peer).unwrap();
            assert_eq!(uid, nix::unistd::geteuid().as_raw());
            drop(client);
        }
        // No such connection: an error, never a guess.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = tcp_peer_uid(l.local_addr().unwrap(), "127.0.0.1:1".parse().unwrap());
        assert!(e.is_err(), "{e:?}");
    }
}
