"""Unit tests of the {{name}} task, run natively by CPython (no host, no
WebAssembly): python3 -m unittest"""

import unittest

from wasmq.testing import TestContext

from app import run


class RunTest(unittest.TestCase):
    def test_greets_and_logs(self):
        result = TestContext(attempt=2).run(run, {"name": "Ada"})
        self.assertEqual(result.output(), {"greeting": "Hello, Ada!"})
        self.assertEqual(result.logs[0].message, "greeting Ada (attempt 2)")

    def test_a_missing_name_is_invalid_input(self):
        result = TestContext().run(run, {})
        self.assertEqual(result.error().kind, "invalid-input")

    def test_the_json_the_host_hands_over(self):
        result = TestContext().run_json(run, '{"name": "Ada"}')
        self.assertEqual(result.output(), '{"greeting":"Hello, Ada!"}')


if __name__ == "__main__":
    unittest.main()
