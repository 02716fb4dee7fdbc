//! Simulated Modbus TCP devices (being built).
