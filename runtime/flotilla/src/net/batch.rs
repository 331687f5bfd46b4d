//! A stream that yields everything queued in a channel as one batch, so a burst of submissions
//! costs one frame.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::Stream;
use tokio::sync::mpsc;

/// Most messages put in one batch.
const MAX_BATCH: usize = 4096;

/// Yields everything queued in a channel as one batch, so a burst of submissions costs one frame.
pub struct Batches<T> {
    rx: mpsc::UnboundedReceiver<T>,
}

impl<T> Batches<T> {
    /// Batches what `rx` receives.
    pub fn new(rx: mpsc::UnboundedReceiver<T>) -> Self {
        Batches { rx }
    }
}

impl<T> Stream for Batches<T> {
    type Item = Vec<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<T>>> {
        poll_batch(&mut self.rx, cx)
    }
}

/// Everything queued in `rx` as one batch (at most [`MAX_BATCH`]), once something is.
pub fn poll_batch<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    cx: &mut Context<'_>,
) -> Poll<Option<Vec<T>>> {
    match rx.poll_recv(cx) {
        Poll::Ready(Some(first)) => {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            Poll::Ready(Some(batch))
        }
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}
