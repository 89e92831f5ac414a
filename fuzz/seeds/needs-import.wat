;; A component importing an interface the host does not provide.
(component
  (import "example:missing/thing@1.0.0" (instance $thing
    (export "poke" (func (param "n" u32) (result u32)))))
  (core func $poke (canon lower (func $thing "poke")))
  (core module $m
    (import "host" "poke" (func $poke (param i32) (result i32)))
    (func (export "run") (param i32) (result i32) (call $poke (local.get 0))))
  (core instance $h (export "poke" (func $poke)))
  (core instance $i (instantiate $m (with "host" (instance $h))))
  (func $run (param "input" u32) (result u32) (canon lift (core func $i "run")))
  (export "run" (func $run)))
