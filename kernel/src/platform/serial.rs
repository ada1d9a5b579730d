//! COM1 console: the `log` backend and the `BATON ...` protocol lines the shim reads
//! (docs/guest-interface.md).

use baton_core::console::GuestLine;
use core::fmt::Write;
use spin::Mutex;
use uart_16550::SerialPort;

/// COM1 I/O base.
const COM1: u16 = 0x3f8;

static COM1_PORT: Mutex<Option<SerialPort>> = Mutex::new(None);

/// Initialises COM1 and installs the logger.
pub fn init(level: log::LevelFilter) {
    // SAFETY: 0x3f8 is COM1 on the `pc` machine; nothing else in the kernel drives these ports.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    *COM1_PORT.lock() = Some(port);
    // A second call would only fail with "already set"; the first logger stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes formatted text to COM1 (dropped before [`init`]).
pub fn write_fmt(args: core::fmt::Arguments) {
    if let Some(port) = COM1_PORT.lock().as_mut() {
        let _ = port.write_fmt(args);
    }
}

/// Writes to COM1 from a context that may have interrupted a holder of the port lock (panic,
/// exception): takes the lock if it is free, otherwise writes through a fresh handle.
pub fn write_fmt_emergency(args: core::fmt::Arguments) {
    match COM1_PORT.try_lock() {
        Some(mut guard) => {
            if let Some(port) = guard.as_mut() {
                let _ = port.write_fmt(args);
            }
        }
        None => {
            // SAFETY: the holder of the lock is suspended under us and will never resume (we are
            // about to exit); the UART tolerates interleaved bytes.
            let mut port = unsafe { SerialPort::new(COM1) };
            let _ = port.write_fmt(args);
        }
    }
}

/// COM1 as a `core::fmt::Write`, for code that formats straight onto the console.
pub struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_fmt(format_args!("{s}"));
        Ok(())
    }
}

/// Prints one protocol line (`BATON ...\n`) in its one format, `baton_core::console::GuestLine`,
/// which the shim parses with the matching parser.
pub fn print_line(line: &GuestLine<'_>) {
    write_fmt(format_args!("{line}\n"));
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let ms = super::clock::uptime_us() / 1000;
            write_fmt(format_args!(
                "[{:<5} {:>6}ms] {}\n",
                record.level(),
                ms,
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}
