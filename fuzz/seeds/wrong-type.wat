;; `run` with the wrong signature.
(component
  (core module $m (func (export "run") (param i32) (result i32) (local.get 0)))
  (core instance $i (instantiate $m))
  (func $run (param "input" u32) (result u32) (canon lift (core func $i "run")))
  (export "run" (func $run)))
