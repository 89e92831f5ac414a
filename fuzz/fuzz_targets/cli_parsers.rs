//! The parsers of what people type for limits (`--memory 64MiB`,
//! `--timeout 30s`, `--fuel unlimited`, and the same in WASMQ_* variables):
//! no input panics or overflows, and what one accepts is a value the rest of
//! wasmq can use as it is.
#![no_main]

use std::time::{Instant, SystemTime};
use wasmq::fuel::Fuel;
use wasmq::runtime::{parse_duration, parse_fuel, parse_size};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(bytes) = parse_size(text) {
        // The number alone says the same size.
        assert_eq!(parse_size(&bytes.to_string()), Ok(bytes), "{text:?}");
    }

    if let Ok(d) = parse_duration(text) {
        // A timeout becomes a deadline on both clocks, and a task's stored
        // timeout is whole milliseconds in a signed 64-bit column.
        assert!(Instant::now().checked_add(d).is_some(), "{text:?}: {d:?}");
        assert!(
            SystemTime::now().checked_add(d).is_some(),
            "{text:?}: {d:?}"
        );
        assert!(i64::try_from(d.as_millis()).is_ok(), "{text:?}: {d:?}");
    }

    let fuel = text.parse::<Fuel>();
    assert_eq!(
        parse_fuel(text),
        fuel.clone().map(Fuel::units).map_err(Into::into)
    );
    if let Ok(fuel) = fuel {
        assert_ne!(fuel.units(), Some(0), "0 never means unlimited");
        assert_eq!(fuel.to_string().parse::<Fuel>(), Ok(fuel));
        let json = serde_json::to_string(&fuel).expect("fuel serializes");
        assert_eq!(serde_json::from_str::<Fuel>(&json).ok(), Some(fuel));
    }
    // The JSON form, as the HTTP API and stored limits carry it.
    if let Ok(fuel) = serde_json::from_str::<Fuel>(text) {
        assert_ne!(fuel.units(), Some(0));
    }
});
