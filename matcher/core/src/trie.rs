//! Pattern subscriptions in a token trie, like a NATS sublist: a topic walks the trie once,
//! following its literal tokens and `*` edges and collecting `>` buckets on the way, so the
//! cost depends on the topic's length and the trie's branching, not on the pattern count.

use hashbrown::HashMap;
use sift_protocol::{Pattern, PatternToken, Topic};

/// Index of a bucket in the engine's bucket table.
pub(crate) type BucketId = u32;
type NodeId = u32;
const ROOT: NodeId = 0;

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, NodeId>,
    star: Option<NodeId>,
    /// Bucket of the pattern that ends here.
    end: Option<BucketId>,
    /// Bucket of the pattern that ends here with `>`.
    tail: Option<BucketId>,
    /// Parent and the edge from it (`None` = `*`), for pruning.
    parent: Option<(NodeId, Option<Box<str>>)>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.end.is_none() && self.tail.is_none()
    }
}

#[derive(Debug)]
pub(crate) struct Trie {
    nodes: Vec<Node>,
    free: Vec<NodeId>,
    /// Number of patterns held.
    len: usize,
    /// Scratch frontiers for matching (kept to avoid allocating per event).
    frontier: Vec<NodeId>,
    next: Vec<NodeId>,
}

impl Default for Trie {
    fn default() -> Trie {
        Trie {
            nodes: vec![Node::default()],
            free: vec![],
            len: 0,
            frontier: vec![],
            next: vec![],
        }
    }
}

impl Trie {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn alloc(&mut self, parent: NodeId, edge: Option<Box<str>>) -> NodeId {
        let node = Node {
            parent: Some((parent, edge)),
            ..Node::default()
        };
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    /// Walks to (creating) the node where `pattern` ends; returns it and whether the last
    /// token was `>`.
    fn walk_create(&mut self, pattern: &Pattern) -> (NodeId, bool) {
        let mut at = ROOT;
        for token in pattern.tokens() {
            at = match token {
                PatternToken::Tail => return (at, true),
                PatternToken::Star => match self.nodes[at as usize].star {
                    Some(n) => n,
                    None => {
                        let n = self.alloc(at, None);
                        self.nodes[at as usize].star = Some(n);
                        n
                    }
                },
                PatternToken::Literal(t) => match self.nodes[at as usize].literal.get(t) {
                    Some(&n) => n,
                    None => {
                        let n = self.alloc(at, Some(t.into()));
                        self.nodes[at as usize].literal.insert(t.into(), n);
                        n
                    }
                },
            };
        }
        (at, false)
    }

    fn walk(&self, pattern: &str) -> Option<(NodeId, bool)> {
        let mut at = ROOT;
        for token in pattern.split('.') {
            let node = &self.nodes[at as usize];
            at = match token {
                ">" => return Some((at, true)),
                "*" => node.star?,
                t => *node.literal.get(t)?,
            };
        }
        Some((at, false))
    }

    /// The bucket of `pattern`, if it has one.
    pub(crate) fn get(&self, pattern: &Pattern) -> Option<BucketId> {
        let (node, tail) = self.walk(pattern.as_str())?;
        let n = &self.nodes[node as usize];
        if tail {
            n.tail
        } else {
            n.end
        }
    }

    /// Records `bucket` as the bucket of `pattern` (which has none yet).
    pub(crate) fn insert(&mut self, pattern: &Pattern, bucket: BucketId) {
        let (node, tail) = self.walk_create(pattern);
        let n = &mut self.nodes[node as usize];
        let place = if tail { &mut n.tail } else { &mut n.end };
        debug_assert!(place.is_none(), "pattern {pattern} inserted twice");
        *place = Some(bucket);
        self.len += 1;
    }

    /// Forgets the bucket of `pattern` and prunes nodes left empty.
    pub(crate) fn remove(&mut self, pattern: &str) {
        let Some((mut node, tail)) = self.walk(pattern) else {
            debug_assert!(false, "pattern {pattern} not in the trie");
            return;
        };
        let n = &mut self.nodes[node as usize];
        let place = if tail { &mut n.tail } else { &mut n.end };
        if place.take().is_some() {
            self.len -= 1;
        }
        while node != ROOT && self.nodes[node as usize].is_empty() {
            let Some((parent, edge)) = self.nodes[node as usize].parent.take() else {
                break;
            };
            let p = &mut self.nodes[parent as usize];
            match edge {
                None => p.star = None,
                Some(t) => {
                    p.literal.remove(&t);
                }
            }
            self.nodes[node as usize] = Node::default();
            self.free.push(node);
            node = parent;
        }
    }

    /// Appends the bucket of every pattern that matches `topic`.
    pub(crate) fn matches(&mut self, topic: &Topic, out: &mut Vec<BucketId>) {
        if self.len == 0 {
            return;
        }
        let mut frontier = std::mem::take(&mut self.frontier);
        let mut next = std::mem::take(&mut self.next);
        frontier.clear();
        frontier.push(ROOT);
        for token in topic.tokens() {
            next.clear();
            for &at in &frontier {
                let node = &self.nodes[at as usize];
                // `>` here matches this token and everything after it.
                if let Some(b) = node.tail {
                    out.push(b);
                }
                if let Some(&n) = node.literal.get(token) {
                    next.push(n);
                }
                if let Some(n) = node.star {
                    next.push(n);
                }
            }
            std::mem::swap(&mut frontier, &mut next);
            if frontier.is_empty() {
                break;
            }
        }
        for &at in &frontier {
            if let Some(b) = self.nodes[at as usize].end {
                out.push(b);
            }
        }
        // If the walk stopped early the frontier is empty, so no false `end` matches.
        self.frontier = frontier;
        self.next = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_patterns_and_prunes() {
        let pats = ["a.*.c", "a.>", ">", "*", "a.b.c", "*.b.>", "x.y"];
        let mut t = Trie::default();
        for (i, p) in pats.iter().enumerate() {
            t.insert(&Pattern::parse(p).unwrap(), i as BucketId);
        }
        for topic in ["a", "a.b", "a.b.c", "a.x.c", "q.b.c.d", "x.y", "x.y.z"] {
            let topic = Topic::parse(topic).unwrap();
            let mut got = vec![];
            t.matches(&topic, &mut got);
            got.sort();
            let want: Vec<BucketId> = pats
                .iter()
                .enumerate()
                .filter(|(_, p)| Pattern::parse(p).unwrap().matches(&topic))
                .map(|(i, _)| i as BucketId)
                .collect();
            assert_eq!(got, want, "{topic}");
        }
        for p in pats {
            t.remove(p);
        }
        assert_eq!(t.len(), 0);
        assert!(t.nodes[0].is_empty(), "every node pruned");
        assert_eq!(t.free.len(), t.nodes.len() - 1);
    }
}
