use std::error::Error;
use std::sync::Arc;

/// The error beneath another one (the I/O error under a lost connection, the store's under a
/// task's failure): shared, since the errors above it are cloned, and still downcastable,
/// since [`Cause::error`] gives the error inside, not the `Arc` (an `Arc<dyn Error>` is an
/// error of its own type). The IMAP, SMTP and task errors keep their cause in one.
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(e))
    }

    /// The error itself, for `Error::source`.
    pub fn error(&self) -> &(dyn Error + 'static) {
        &*self.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cause_downcasts_to_the_error_inside() {
        let c = super::Cause::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let io = c.error().downcast_ref::<std::io::Error>().expect("the io::Error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
