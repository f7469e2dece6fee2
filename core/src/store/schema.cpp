#include "store/schema.h"

#include <map>
#include <string>

#include "engram/error.h"

#include "engram/store.h"

namespace engram::store {

namespace {

struct Migration {
    int64_t version;     // user_version after this step
    const char* script;  // fixed DDL, no parameters
};

// Version 1. Blobs are the last column of their rows, so listing metadata never reads them.
constexpr const char* kSchemaV1 = R"sql(
PRAGMA application_id = 1164855122;
CREATE TABLE models (
    id            INTEGER PRIMARY KEY,
    path          TEXT NOT NULL,
    architecture  TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    stored_dtype  TEXT NOT NULL,
    added_at      TEXT NOT NULL
);
CREATE TABLE edits (
    id                INTEGER PRIMARY KEY,
    seq               INTEGER NOT NULL UNIQUE,
    created_at        TEXT NOT NULL,
    method            TEXT NOT NULL,
    requests          TEXT NOT NULL,
    hparams           TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'reverted')),
    metrics           TEXT NOT NULL,
    duration_s        REAL NOT NULL,
    state_hash_after  TEXT NOT NULL,
    parent_id         INTEGER REFERENCES edits(id),
    n_deltas          INTEGER NOT NULL,
    n_artifacts       INTEGER NOT NULL
);
-- The edits an edit was computed on (its basis), stored as exceptions: basis(e) is
-- state_after(parent_id), plus the rows with included = 1, minus those with included = 0, where
-- state_after(p) = basis(p) + p. A linear history needs no rows at all.
CREATE TABLE edit_basis (
    edit_id   INTEGER NOT NULL REFERENCES edits(id) ON DELETE CASCADE,
    basis_id  INTEGER NOT NULL REFERENCES edits(id),
    included  INTEGER NOT NULL CHECK (included IN (0, 1)),
    PRIMARY KEY (edit_id, basis_id)
) WITHOUT ROWID;
CREATE TABLE deltas (
    id        INTEGER PRIMARY KEY,
    edit_id   INTEGER NOT NULL REFERENCES edits(id) ON DELETE CASCADE,
    ord       INTEGER NOT NULL,
    tensor    TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('low_rank', 'dense_rows', 'dense')),
    shape     TEXT NOT NULL,
    dtype     TEXT NOT NULL,
    rank      INTEGER NOT NULL,
    checksum  TEXT NOT NULL,
    blob      BLOB NOT NULL,
    UNIQUE (edit_id, ord)
);
CREATE TABLE artifacts (
    id        INTEGER PRIMARY KEY,
    edit_id   INTEGER NOT NULL REFERENCES edits(id) ON DELETE CASCADE,
    ord       INTEGER NOT NULL,
    name      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    dtype     TEXT NOT NULL,
    shape     TEXT NOT NULL,
    meta      TEXT NOT NULL,
    checksum  TEXT NOT NULL,
    blob      BLOB NOT NULL,
    UNIQUE (edit_id, name)
);
CREATE TABLE redo_stack (
    pos      INTEGER PRIMARY KEY,
    edit_id  INTEGER NOT NULL UNIQUE REFERENCES edits(id)
);
CREATE TABLE operations (
    id          INTEGER PRIMARY KEY,
    time        TEXT NOT NULL,
    op          TEXT NOT NULL,
    edit_id     INTEGER REFERENCES edits(id),
    detail      TEXT NOT NULL,
    state_hash  TEXT NOT NULL
);
CREATE TABLE traces (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    state_hash  TEXT NOT NULL,
    params      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    dtype       TEXT NOT NULL,
    shape       TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    blob        BLOB NOT NULL
);
CREATE TABLE evaluations (
    id          INTEGER PRIMARY KEY,
    created_at  TEXT NOT NULL,
    state_hash  TEXT NOT NULL,
    edit_id     INTEGER REFERENCES edits(id),
    kind        TEXT NOT NULL,
    params      TEXT NOT NULL,
    results     TEXT NOT NULL
);
)sql";

// Version 2: edits that live beside the weights (adapter.h). An op's tensors are rows of their own.
constexpr const char* kSchemaV2 = R"sql(
ALTER TABLE edits ADD COLUMN n_adapter_ops INTEGER NOT NULL DEFAULT 0;
CREATE TABLE adapter_ops (
    id        INTEGER PRIMARY KEY,
    edit_id   INTEGER NOT NULL REFERENCES edits(id) ON DELETE CASCADE,
    ord       INTEGER NOT NULL,
    adapter   TEXT NOT NULL,
    kind      TEXT NOT NULL,
    attach    TEXT NOT NULL,
    layer     INTEGER NOT NULL,
    op        TEXT NOT NULL,
    params    TEXT NOT NULL,
    UNIQUE (edit_id, ord)
);
CREATE TABLE adapter_op_tensors (
    id        INTEGER PRIMARY KEY,
    op_id     INTEGER NOT NULL REFERENCES adapter_ops(id) ON DELETE CASCADE,
    ord       INTEGER NOT NULL,
    name      TEXT NOT NULL,
    dtype     TEXT NOT NULL,
    shape     TEXT NOT NULL,
    checksum  TEXT NOT NULL,
    blob      BLOB NOT NULL,
    UNIQUE (op_id, ord)
);
)sql";

constexpr Migration kMigrations[] = {
    {1, kSchemaV1},
    {2, kSchemaV2},
};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == kProjectSchemaVersion, "one migration step per schema version");

}  // namespace

SchemaState inspect(sql::Database& db) {
    SchemaState s;
    s.application_id = db.pragma_int("application_id");
    s.user_version = db.pragma_int("user_version");
    sql::Statement count(db, "SELECT count(*) FROM sqlite_master");
    if (count.step()) s.objects = count.column_int(0);
    return s;
}

namespace {

struct SchemaObject {
    std::string type, name, table, sql;
    bool operator==(const SchemaObject&) const = default;
};

// Every schema object by name ("sqlite_autoindex_..." included: they follow from the table text).
std::map<std::string, SchemaObject> schema_objects(sql::Database& db) {
    std::map<std::string, SchemaObject> out;
    sql::Statement st(db, "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master");
    while (st.step()) {
        SchemaObject o{st.column_text(0), st.column_text(1), st.column_text(2), st.column_text(3)};
        out[o.name] = std::move(o);
    }
    return out;
}

}  // namespace

void check_schema(sql::Database& db, int64_t version) {
    sql::Database reference(":memory:", sql::Database::Mode::Create);
    run_migrations(reference, 0, version);
    const auto expected = schema_objects(reference);
    const auto actual = schema_objects(db);
    const std::string what = db.file().string() + ": the project's schema is not Engram's";
    for (const auto& [name, o] : actual) {
        auto it = expected.find(name);
        if (it == expected.end())
            throw Error(ErrorKind::Format, what + ": it has an extra " + o.type + " '" + name + "'; nothing was changed (Engram never creates one)");
        if (!(it->second == o))
            throw Error(ErrorKind::Format, what + ": " + o.type + " '" + name + "' is defined differently; nothing was changed");
    }
    for (bool tables : {true, false})  // a missing table before the indexes it takes with it
        for (const auto& [name, o] : expected)
            if ((o.type == "table") == tables && !actual.count(name))
                throw Error(ErrorKind::Format, what + ": " + o.type + " '" + name + "' is missing; the file is damaged");
}

void run_migrations(sql::Database& db, int64_t from, int64_t to) {
    for (const Migration& m : kMigrations) {
        if (m.version <= from || m.version > to) continue;
        db.exec(m.script, ("migrating the project to schema " + std::to_string(m.version)).c_str());
        db.exec(("PRAGMA user_version = " + std::to_string(m.version)).c_str(), "recording the schema version");
    }
}

}  // namespace engram::store
