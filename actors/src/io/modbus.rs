//! Modbus TCP devices (being written).
