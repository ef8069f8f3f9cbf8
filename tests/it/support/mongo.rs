//! MongoDB for tests: the in-process `mongosim` simulator, or a real replica set when
//! `MONGO_TEST_URI` is set. Lands with the simulator issue.
