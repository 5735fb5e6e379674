//! Operator requests to the coordinator: list the matchers, drain one, remove one.

use sift_protocol::frame::{Frame, NodeStatus};
use sift_protocol::limits::FRAME_BYTES_MAX;
use sift_protocol::net::{FrameReader, FrameWriter};

use crate::client::{connect_coordinator, refusal};
use crate::{Client, ClientError};

impl Client {
    async fn coordinator_request(&self, frame: Frame) -> Result<Frame, ClientError> {
        let conn = connect_coordinator(&self.inner).await?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        let mut w = FrameWriter::new(send, FRAME_BYTES_MAX);
        let mut r = FrameReader::new(recv, FRAME_BYTES_MAX);
        w.send(&frame)
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        let answer = tokio::time::timeout(self.inner.config.request_timeout, r.next())
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        conn.close(0u32.into(), b"done");
        answer.ok_or_else(|| ClientError::Connection("the coordinator closed the stream".into()))
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
