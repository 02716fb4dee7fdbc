//! Modbus TCP and SunSpec (being built).
