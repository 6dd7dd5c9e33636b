//! TLS for the process's HTTPS clients (the upstream, the OTLP exporter): one rustls crypto
//! provider (ring), installed once before the first client is built.

/// reqwest is built without a bundled crypto provider (the default one needs a heavy C
/// build); ring is installed once for the whole process instead.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only means another provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
