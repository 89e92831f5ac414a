;; A core module with a loop, traps and memory ops, inside a component that
;; exports nothing: compiled, then refused for the missing `run`.
(component
  (core module
    (memory 1 2)
    (table 2 funcref)
    (global $g (mut i64) (i64.const 0))
    (func $f (param i32) (result i32)
      (local $i i32)
      (block $out
        (loop $top
          (br_if $out (i32.ge_u (local.get $i) (local.get 0)))
          (i32.store (i32.mul (local.get $i) (i32.const 4)) (local.get $i))
          (global.set $g (i64.add (global.get $g) (i64.extend_i32_u (local.get $i))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $top)))
      (if (i32.eqz (local.get 0)) (then unreachable))
      (i32.div_u (i32.load (i32.const 0)) (local.get 0)))
    (elem (i32.const 0) $f)
    (export "f" (func $f))))
