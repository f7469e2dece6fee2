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

// Runs the steps from `from` to the current version inside the caller's transaction.
void run_migrations(sql::Database& db, int64_t from);

}  // namespace engram::store
