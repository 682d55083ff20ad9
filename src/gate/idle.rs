//! An idle timeout for a body polled frame by frame: it fires once nothing has come
//! for the timeout since the last frame. The timer is made only the first time the
//! body keeps its reader waiting (most bodies never do), and moved on when it fires
//! rather than on every frame, since re-arming a timer takes the timer wheel's lock.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The idle state of one body.
#[derive(Debug)]
pub struct Idle {
    timeout: Duration,
    last_frame: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    /// Starts counting now.
    pub fn new(timeout: Duration) -> Idle {
        Idle {
            timeout,
            last_frame: Instant::now(),
            timer: None,
        }
    }

    /// The longest silence allowed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A frame came.
    pub fn touch(&mut self) {
        self.last_frame = Instant::now();
    }

    /// For a body whose inner poll was `Pending`: whether the silence has lasted the
    /// timeout. When it has not, `cx` is woken when it may have.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_frame + self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_frame + self.timeout;
            if deadline > Instant::now() {
                // A frame came since the timer was set: wait the rest.
                timer.as_mut().reset(deadline);
                continue;
            }
            return true;
        }
        false
    }
}
