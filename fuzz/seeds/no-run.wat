;; A component that exports something other than `run`.
(component
  (core module $m (func (export "go") (result i32) (i32.const 7)))
  (core instance $i (instantiate $m))
  (func $go (result u32) (canon lift (core func $i "go")))
  (export "go" (func $go)))
