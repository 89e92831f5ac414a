-- The Ray node that ran a cluster attempt's job (Ray's `driver_node_id`):
-- on a cluster of several nodes, which machine ran each run. Null for
-- local runs and until the worker learns it from Ray.
ALTER TABLE attempts ADD COLUMN ray_node_id TEXT;
