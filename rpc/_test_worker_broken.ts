/**
 * A handler module for workers_test.ts that throws as it loads.
 *
 * @module
 */
throw new Error("broken on purpose at load");
