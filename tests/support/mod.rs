//! Test support: a fake Ollama and a harness that runs the real gate.
pub mod fake_ollama;
pub mod gate;
