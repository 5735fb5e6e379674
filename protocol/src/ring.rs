//! Ring placement: which matcher owns a topic under a given ring.
//!
//! Every member gets `weight × VNODES_PER_WEIGHT` virtual nodes on a `hashring::HashRing`,
//! keyed `"{id}#{i}"`. Both the virtual-node keys and topics are hashed with [`RingHash`], a
//! fixed function of the bytes (FNV-1a 64 with a final mix) that is part of the protocol, so
//! every client, matcher and coordinator of any version places a topic on the same member.

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;

use crate::frame::{Ring, RingMember};

/// Virtual nodes per unit of weight.
pub const VNODES_PER_WEIGHT: u32 = 256;
/// Largest weight a member may have.
pub const WEIGHT_MAX: u32 = 100;

/// The ring hash: FNV-1a over the exact bytes written, then a 64-bit finaliser. Stable by
/// definition (it is part of the protocol), unlike `std`'s or any crate's default hasher.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingHash;

/// The hasher of [`RingHash`].
#[derive(Clone, Copy, Debug)]
pub struct RingHasher(u64);

impl BuildHasher for RingHash {
    type Hasher = RingHasher;
    fn build_hasher(&self) -> RingHasher {
        RingHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for RingHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
}

/// Bytes hashed exactly as given (no length suffix or terminator).
struct Key<'a>(&'a [u8]);

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// One virtual node: a member index and its `"{id}#{i}"` key.
#[derive(Clone, Debug)]
struct VNode {
    member: usize,
    key: Box<str>,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.key.as_bytes());
    }
}

/// Largest replication factor a ring may ask for.
pub const REPLICAS_MAX: u32 = 5;

/// A ring ready for lookups.
#[derive(Clone, Debug)]
pub struct Placement {
    version: u64,
    members: Vec<RingMember>,
    replicas: usize,
    ring: HashRing<VNode, RingHash>,
    /// The virtual nodes' points in ring order (as `hashring` orders them) with their member,
    /// for walking to a topic's successive distinct owners.
    points: Vec<(u64, usize)>,
}

/// Up to [`REPLICAS_MAX`] owners of one topic, primary first.
pub type Owners<'a> = smallvec::SmallVec<[&'a RingMember; REPLICAS_MAX as usize]>;

impl Placement {
    /// Builds the placement of `ring`. Members with weight 0 own nothing.
    pub fn new(ring: &Ring) -> Placement {
        let mut hr = HashRing::with_hasher(RingHash);
        let mut vnodes = Vec::new();
        for (member, m) in ring.members.iter().enumerate() {
            for i in 0..m.weight.min(WEIGHT_MAX) * VNODES_PER_WEIGHT {
                vnodes.push(VNode {
                    member,
                    key: format!("{}#{i}", m.id).into(),
                });
            }
        }
        let mut points: Vec<(u64, usize)> = vnodes
            .iter()
            .map(|v| (RingHash.hash_one(Key(v.key.as_bytes())), v.member))
            .collect();
        // Stable, like `hashring`'s own sort, so equal points keep the same order.
        points.sort_by_key(|p| p.0);
        hr.batch_add(vnodes);
        Placement {
            version: ring.version,
            members: ring.members.clone(),
            replicas: ring.replicas.clamp(1, REPLICAS_MAX) as usize,
            ring: hr,
            points,
        }
    }

    /// The replication factor R (at least 1).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The ring this placement was built from.
    pub fn ring(&self) -> Ring {
        Ring {
            version: self.version,
            members: self.members.clone(),
            replicas: self.replicas as u32,
        }
    }

    /// True when the member `id` is in the ring.
    pub fn contains(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// The owners of `topic`: the first R distinct members met walking the ring from the
    /// topic's point, the primary ([`Placement::owner`]) first. Fewer when the ring has fewer
    /// members; empty for an empty ring.
    pub fn owners(&self, topic: &str) -> Owners<'_> {
        self.owners_n(topic, self.replicas)
    }

    /// The first `n` distinct owners of `topic` (see [`Placement::owners`]).
    pub fn owners_n(&self, topic: &str, n: usize) -> Owners<'_> {
        let mut out = Owners::new();
        if self.points.is_empty() {
            return out;
        }
        let want = n.min(self.members.len()).min(REPLICAS_MAX as usize);
        let k = RingHash.hash_one(Key(topic.as_bytes()));
        let start = self.points.partition_point(|p| p.0 < k);
        for i in 0..self.points.len() {
            let member = &self.members[self.points[(start + i) % self.points.len()].1];
            if !out.iter().any(|m| m.id == member.id) {
                out.push(member);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// True when member `id` is one of `topic`'s owners.
    pub fn is_owner(&self, topic: &str, id: &str) -> bool {
        self.owners(topic).iter().any(|m| m.id == id)
    }

    /// The ring's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The members, as in the ring.
    pub fn members(&self) -> &[RingMember] {
        &self.members
    }

    /// The owner of `topic`, or `None` for an empty ring.
    pub fn owner(&self, topic: &str) -> Option<&RingMember> {
        self.ring
            .get(&Key(topic.as_bytes()))
            .map(|v| &self.members[v.member])
    }

    /// The share of the hash space each member owns (same order as `members`), summing to 1
    /// for a non-empty ring.
    pub fn shares(&self) -> Vec<f64> {
        let mut points: Vec<(u64, usize)> = Vec::new();
        for (member, m) in self.members.iter().enumerate() {
            for i in 0..m.weight.min(WEIGHT_MAX) * VNODES_PER_WEIGHT {
                let key = format!("{}#{i}", m.id);
                points.push((RingHash.hash_one(Key(key.as_bytes())), member));
            }
        }
        points.sort_unstable();
        let mut shares = vec![0.0; self.members.len()];
        let Some(&(first, first_owner)) = points.first() else {
            return shares;
        };
        // A key hashing into (previous point, point] belongs to the member of `point`.
        let mut prev = first;
        for &(p, owner) in &points[1..] {
            shares[owner] += (p - prev) as f64;
            prev = p;
        }
        // The wrap-around arc, from the last point past u64::MAX to the first.
        shares[first_owner] += (u64::MAX - prev) as f64 + first as f64 + 1.0;
        let total: f64 = shares.iter().sum();
        shares.iter_mut().for_each(|s| *s /= total);
        shares
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(members: &[(&str, u32)]) -> Ring {
        Ring::new(
            1,
            members
                .iter()
                .map(|(id, w)| RingMember {
                    id: (*id).into(),
                    addr: format!("{id}:1"),
                    weight: *w,
                })
                .collect(),
        )
    }

    #[test]
    fn owners_walk_to_distinct_successors_primary_first() {
        let mut r = ring(&[("a", 1), ("b", 1), ("c", 2), ("d", 1)]);
        r.replicas = 3;
        let p = Placement::new(&r);
        let mut second = [0usize; 4];
        for i in 0..20_000 {
            let t = format!("t.{i}");
            let owners = p.owners(&t);
            assert_eq!(owners.len(), 3);
            assert_eq!(owners[0].id, p.owner(&t).unwrap().id, "{t}");
            let mut ids: Vec<&str> = owners.iter().map(|m| m.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 3, "distinct owners for {t}");
            second[p
                .members()
                .iter()
                .position(|m| m.id == owners[1].id)
                .unwrap()] += 1;
        }
        // Every member is somebody's second owner.
        assert!(second.iter().all(|&n| n > 1000), "{second:?}");
        // More replicas than members: every member, once.
        r.replicas = 5;
        assert_eq!(Placement::new(&r).owners("x").len(), 4);
        assert!(Placement::new(&ring(&[])).owners("x").is_empty());
    }

    #[test]
    fn the_hash_is_fixed() {
        // Part of the protocol: these values must never change.
        assert_eq!(RingHash.hash_one(Key(b"")), 0xf52a15e9a9b5e89b);
        assert_eq!(RingHash.hash_one(Key(b"orders.eu")), 0xf1e3629cf802cb0a);
        assert_eq!(RingHash.hash_one(Key(b"m1#0")), 0x1d9e8dcbe5497b16);
    }

    #[test]
    fn weights_shape_the_shares_and_placement() {
        let p = Placement::new(&ring(&[("a", 1), ("b", 1), ("c", 2)]));
        let shares = p.shares();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!((shares[2] - 0.5).abs() < 0.08, "{shares:?}");
        let mut counts = [0usize; 3];
        for i in 0..20_000 {
            let owner = p.owner(&format!("t.{i}")).unwrap();
            counts[p.members().iter().position(|m| m.id == owner.id).unwrap()] += 1;
        }
        assert!((9_000..11_000).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn a_join_moves_about_one_nth() {
        let before = Placement::new(&ring(&[("a", 1), ("b", 1), ("c", 1)]));
        let after = Placement::new(&ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]));
        let moved = (0..20_000)
            .filter(|i| {
                let t = format!("t.{i}");
                before.owner(&t).unwrap().id != after.owner(&t).unwrap().id
            })
            .count();
        // A quarter move (1/(N+1), within 10% of it), and only to the new member.
        assert!((4_500..=5_500).contains(&moved), "{moved}");
        for i in 0..20_000 {
            let t = format!("t.{i}");
            let (b, a) = (before.owner(&t).unwrap(), after.owner(&t).unwrap());
            assert!(b.id == a.id || a.id == "d");
        }
        assert!(Placement::new(&ring(&[])).owner("x").is_none());
    }
}
