//! Test support: a fake Ollama, a harness that runs the real gate, a real
//! OpenAI-compatible server (llama-cpp-python) with a tiny model, and what the queue's
//! tests share.
pub mod fake_ollama;
pub mod gate;
pub mod llama;
pub mod queue;
