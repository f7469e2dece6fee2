// The project schema and its migrations, keyed by PRAGMA user_version.
//
// To change the schema: append a Migration with the next version and the statements that bring
// version N-1 to N, and raise kProjectSchemaVersion in store.h. Never edit a released step.
#pragma once

#include <cstdint>

#include "store/sqlite.h"

namespace engram::store {

// PRAGMA application_id of an Engram project: "EnGR".
inline constexpr int64_t kApplicationId = 0x456E4752;

struct SchemaState {
    int64_t application_id = 0;
    int64_t user_version = 0;
    int64_t objects = 0;  // rows in sqlite_schema: 0 for a new, empty database
    bool empty() const { return application_id == 0 && user_version == 0 && objects == 0; }
};

// Reads the header fields; touching the file this way also detects "not a database".
SchemaState inspect(sql::Database& db);

// Refuses (engram::Error, Format) a file whose schema objects are not exactly those the migrations
// create for its version: an extra trigger, view, index or table, or a table defined differently.
// A project from someone else could otherwise carry SQL that runs when Engram writes to it.
void check_schema(sql::Database& db, int64_t version);

// Runs the steps after `from` up to `to` (kProjectSchemaVersion: the current one) inside the
// caller's transaction.
void run_migrations(sql::Database& db, int64_t from, int64_t to);

}  // namespace engram::store
