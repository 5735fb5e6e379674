//! Virtual networks: the complete graph, random regular graphs, Erdős–Rényi graphs.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sift_matcher_core::gossip::NodeId;

/// Who can talk to whom.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Topology {
    /// Everyone with everyone.
    Complete,
    /// Every node with `d` random neighbours (configuration model; the rare self-loops and
    /// repeated edges are dropped, so a few nodes end with slightly fewer).
    RandomRegular(u32),
    /// Every pair independently with probability `p`.
    ErdosRenyi(f64),
}

/// A topology that does not parse or does not fit the node count.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopologyError {
    /// Not a known name.
    #[error("invalid topology {0:?} (expected complete, random-regular:D or erdos-renyi:P)")]
    Name(String),
    /// Degree not below the node count, or zero.
    #[error("random-regular degree must be between 1 and nodes - 1, not {0}")]
    Degree(u32),
    /// Probability outside (0, 1].
    #[error("erdos-renyi probability must be in (0, 1], not {0}")]
    Probability(f64),
    /// Too many edges to hold.
    #[error("the graph would have about {0} edges; at most 200,000,000 are simulated")]
    TooLarge(u64),
}

impl FromStr for Topology {
    type Err = TopologyError;

    fn from_str(text: &str) -> Result<Topology, TopologyError> {
        let bad = || TopologyError::Name(text.to_owned());
        match text.trim().split_once(':') {
            None if text.trim() == "complete" => Ok(Topology::Complete),
            Some(("random-regular", d)) => {
                Ok(Topology::RandomRegular(d.parse().map_err(|_| bad())?))
            }
            Some(("erdos-renyi", p)) => Ok(Topology::ErdosRenyi(p.parse().map_err(|_| bad())?)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Complete => f.write_str("complete"),
            Topology::RandomRegular(d) => write!(f, "random-regular:{d}"),
            Topology::ErdosRenyi(p) => write!(f, "erdos-renyi:{p}"),
        }
    }
}

const EDGES_MAX: u64 = 200_000_000;

impl Topology {
    /// Whether it fits `nodes`.
    pub fn check(&self, nodes: usize) -> Result<(), TopologyError> {
        match *self {
            Topology::Complete => Ok(()),
            Topology::RandomRegular(d) => {
                if d == 0 || d as usize >= nodes {
                    return Err(TopologyError::Degree(d));
                }
                let edges = nodes as u64 * u64::from(d) / 2;
                if edges > EDGES_MAX {
                    return Err(TopologyError::TooLarge(edges));
                }
                Ok(())
            }
            Topology::ErdosRenyi(p) => {
                if !(p > 0.0 && p <= 1.0) || (p < 1.0 && (-p).ln_1p() == 0.0) {
                    return Err(TopologyError::Probability(p));
                }
                let edges = (p * nodes as f64 * (nodes as f64 - 1.0) / 2.0) as u64;
                if edges > EDGES_MAX {
                    return Err(TopologyError::TooLarge(edges));
                }
                Ok(())
            }
        }
    }

    /// The graph (`None` for the complete graph, which is never materialised).
    pub fn build(
        &self,
        nodes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Option<Graph>, TopologyError> {
        self.check(nodes)?;
        let mut edges: Vec<(u32, u32)> = Vec::new();
        match *self {
            Topology::Complete => return Ok(None),
            Topology::RandomRegular(d) => {
                let mut stubs: Vec<u32> = (0..nodes as u32)
                    .flat_map(|i| std::iter::repeat_n(i, d as usize))
                    .collect();
                stubs.shuffle(rng);
                for pair in stubs.chunks_exact(2) {
                    if pair[0] != pair[1] {
                        edges.push((pair[0], pair[1]));
                    }
                }
            }
            Topology::ErdosRenyi(p) => {
                // Geometric skips over the pairs (i, j), i < j: O(edges), not O(n²).
                let n = nodes as u64;
                let log_q = (-p).ln_1p();
                let (mut i, mut j) = (0u64, 0u64);
                loop {
                    let skip = if p >= 1.0 {
                        0
                    } else {
                        let u: f64 = rng.random::<f64>();
                        ((1.0 - u).ln() / log_q).floor() as u64
                    };
                    j += 1 + skip;
                    while i < n && j >= n {
                        j = j - n + i + 2;
                        i += 1;
                    }
                    if i >= n || j >= n {
                        break;
                    }
                    edges.push((i as u32, j as u32));
                }
            }
        }
        Ok(Some(Graph::from_edges(nodes, &edges)))
    }
}

/// An undirected graph as adjacency lists in one array.
#[derive(Clone, Debug)]
pub struct Graph {
    offsets: Vec<usize>,
    adjacent: Vec<NodeId>,
}

impl Graph {
    fn from_edges(nodes: usize, edges: &[(u32, u32)]) -> Graph {
        let mut lists: Vec<Vec<NodeId>> = vec![Vec::new(); nodes];
        for &(a, b) in edges {
            lists[a as usize].push(NodeId::from(b));
            lists[b as usize].push(NodeId::from(a));
        }
        let mut offsets = Vec::with_capacity(nodes + 1);
        let mut adjacent = Vec::with_capacity(edges.len() * 2);
        offsets.push(0);
        for mut list in lists {
            list.sort_unstable();
            list.dedup();
            adjacent.extend(list);
            offsets.push(adjacent.len());
        }
        Graph { offsets, adjacent }
    }

    /// Node `i`'s neighbours.
    pub fn neighbours(&self, i: usize) -> &[NodeId] {
        &self.adjacent[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Nodes.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mean degree.
    pub fn mean_degree(&self) -> f64 {
        self.adjacent.len() as f64 / self.len().max(1) as f64
    }
}
