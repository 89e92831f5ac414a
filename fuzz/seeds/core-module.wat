;; A core module: refused by the header check, not compiled.
(module (memory 1) (func (export "f") (result i32) (i32.const 1)))
