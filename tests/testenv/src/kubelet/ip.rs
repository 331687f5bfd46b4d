//! Pod IPs: one loopback address per pod, derived from the pod's namespace and name.
//!
//! Linux routes all of `127.0.0.0/8` to the loopback interface, so every pod can bind its own
//! address with no network setup. The address is a hash of `<namespace>/<name>`, so a pod
//! re-created under the same name (the head, typically) comes back on the same address and the
//! addresses other pods resolved earlier stay valid. On a collision with a live pod the next
//! free address is taken.

use std::{collections::HashMap, net::Ipv4Addr};

/// The node's own address, reported as `status.hostIP`.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Pod addresses are `127.a.b.c` with `a >= 1` (leaving `127.0.0.0/16`, where 127.0.0.1 lives,
/// to the host) and `c` in `1..=254`.
const FIRST_A: u32 = 1;
const SLOTS_PER_B: u32 = 254;
const SLOTS: u32 = (256 - FIRST_A) * 256 * SLOTS_PER_B;

/// The address a pod gets when nothing else holds it.
pub fn preferred_ip(namespace: &str, name: &str) -> Ipv4Addr {
    slot_ip(fnv1a(namespace, name) % SLOTS)
}

fn slot_ip(slot: u32) -> Ipv4Addr {
    let c = slot % SLOTS_PER_B + 1;
    let b = (slot / SLOTS_PER_B) % 256;
    let a = slot / SLOTS_PER_B / 256 + FIRST_A;
    // Each part is below 256 by construction.
    Ipv4Addr::new(127, a as u8, b as u8, c as u8)
}

/// 32-bit FNV-1a over `namespace/name`: stable across builds, processes and Rust versions. The
/// `fnv` crate has only the 64-bit variant, which would move every pod to another address.
fn fnv1a(namespace: &str, name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The addresses held by live pods. Pods with the same namespace and name share their address
/// (the old one is still stopping while its replacement starts), so an entry is counted.
#[derive(Debug, Default)]
pub struct IpTable {
    held: HashMap<Ipv4Addr, Holder>,
}

#[derive(Debug)]
struct Holder {
    namespace: String,
    name: String,
    count: usize,
}

impl IpTable {
    /// Takes the address of `namespace/name`: its preferred one, or on a collision with another
    /// live pod the next free one.
    pub fn acquire(&mut self, namespace: &str, name: &str) -> Ipv4Addr {
        let start = fnv1a(namespace, name) % SLOTS;
        for step in 0..SLOTS {
            let ip = slot_ip((start + step) % SLOTS);
            match self.held.get_mut(&ip) {
                Some(holder) if holder.namespace == namespace && holder.name == name => {
                    holder.count += 1;
                    return ip;
                }
                Some(_) => continue,
                None => {
                    self.held.insert(
                        ip,
                        Holder {
                            namespace: namespace.to_owned(),
                            name: name.to_owned(),
                            count: 1,
                        },
                    );
                    return ip;
                }
            }
        }
        // Sixteen million live pods on one machine cannot happen; share the preferred address.
        slot_ip(start)
    }

    /// Gives back an address taken with [`IpTable::acquire`].
    pub fn release(&mut self, ip: Ipv4Addr) {
        if let Some(holder) = self.held.get_mut(&ip) {
            holder.count -= 1;
            if holder.count == 0 {
                self.held.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stable_loopback_and_never_the_hosts() {
        let ip = preferred_ip("default", "demo-head");
        assert_eq!(ip, preferred_ip("default", "demo-head"));
        assert_ne!(ip, preferred_ip("other", "demo-head"));
        assert_ne!(ip, preferred_ip("default", "demo-head-2"));
        for slot in [0, 1, 253, 254, SLOTS / 2, SLOTS - 1] {
            let ip = slot_ip(slot);
            let [first, a, _, c] = ip.octets();
            assert_eq!(first, 127);
            assert!(a >= 1, "{ip}");
            assert!((1..=254).contains(&c), "{ip}");
        }
        assert_eq!(slot_ip(SLOTS - 1), Ipv4Addr::new(127, 255, 255, 254));
    }

    #[test]
    fn addresses_are_32_bit_fnv1a_of_namespace_and_name() {
        // Pinned, so that a pod keeps its address from one version of the kubelet to the next.
        assert_eq!(fnv1a("default", "demo-head"), 0x210c_8da5);
        assert_eq!(
            preferred_ip("default", "demo-head"),
            Ipv4Addr::new(127, 113, 43, 252)
        );
        assert_eq!(fnv1a("ns", "a"), 0xa520_febe);
        assert_eq!(preferred_ip("ns", "a"), Ipv4Addr::new(127, 21, 218, 115));
    }

    #[test]
    fn collisions_probe_and_same_name_shares() {
        let mut table = IpTable::default();
        let first = table.acquire("ns", "a");
        assert_eq!(first, preferred_ip("ns", "a"));
        // A replacement of the same pod shares the address while the old one stops.
        assert_eq!(table.acquire("ns", "a"), first);
        // Force a collision: hold `a`'s address under another name.
        let mut table = IpTable::default();
        table.held.insert(
            first,
            Holder {
                namespace: "ns".into(),
                name: "squatter".into(),
                count: 1,
            },
        );
        let moved = table.acquire("ns", "a");
        assert_ne!(moved, first);
        table.release(moved);
        table.release(first);
        assert!(table.held.is_empty());
        assert_eq!(table.acquire("ns", "a"), first);
    }
}
