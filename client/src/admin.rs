//! Operator requests to the coordinator: list the matchers, drain one, remove one.

use sift_protocol::frame::{Frame, NodeStatus};

use crate::client::refusal;
use crate::{Client, ClientError};

impl Client {
    async fn coordinator_request(&self, frame: Frame) -> Result<Frame, ClientError> {
        self.inner.coordinator_request(frame).await
    }

    /// Every registered matcher with its state (operator request to the coordinator).
    pub async fn admin_nodes(&self) -> Result<Vec<NodeStatus>, ClientError> {
        match self
            .coordinator_request(Frame::AdminNodes { req: 1 })
            .await?
        {
            Frame::Nodes { nodes, .. } => Ok(nodes),
            other => Err(refusal(other)),
        }
    }

    /// Takes matcher `id` out of the ring: its topics move to the others, and it keeps
    /// heartbeating until removed or stopped.
    pub async fn admin_drain(&self, id: &str) -> Result<(), ClientError> {
        match self
            .coordinator_request(Frame::AdminDrain {
                req: 1,
                node: id.into(),
            })
            .await?
        {
            Frame::Ok { .. } => Ok(()),
            other => Err(refusal(other)),
        }
    }

    /// The counters of the node at this client's configured address — a gossip node, or a
    /// matcher when the client was pointed at one (a coordinator refuses).
    pub async fn node_stats(&self) -> Result<Vec<(String, u64)>, ClientError> {
        match self
            .coordinator_request(Frame::StatsFetch { req: 1 })
            .await?
        {
            Frame::Stats { counters, .. } => Ok(counters),
            other => Err(refusal(other)),
        }
    }

    /// Forgets matcher `id`.
    pub async fn admin_remove(&self, id: &str) -> Result<(), ClientError> {
        match self
            .coordinator_request(Frame::AdminRemove {
                req: 1,
                node: id.into(),
            })
            .await?
        {
            Frame::Ok { .. } => Ok(()),
            other => Err(refusal(other)),
        }
    }
}
