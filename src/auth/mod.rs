//! Credentials as such: the API key format, password hashing and JWTs. No I/O and no
//! knowledge of the gate or the database.

pub mod jwt;
pub mod key;
pub mod password;
