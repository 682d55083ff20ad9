//! Test support: a fake Ollama, a harness that runs the real gate, and a real
//! OpenAI-compatible server (llama-cpp-python) with a tiny model.
pub mod fake_ollama;
pub mod gate;
pub mod llama;
