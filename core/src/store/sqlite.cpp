#include "store/sqlite.h"

#include <sqlite3.h>

#include <utility>

#include "engram/error.h"

namespace engram::sql {

namespace fs = std::filesystem;

namespace {

// A plain-language reason for the result codes a user can act on.
std::string reason(int rc, sqlite3* db) {
    const std::string detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    switch (rc & 0xff) {
        case SQLITE_FULL: return "the database or disk is full (" + detail + ")";
        case SQLITE_READONLY: return "the project file is read-only (" + detail + ")";
        case SQLITE_BUSY:
        case SQLITE_LOCKED: return "the project is locked by another process (" + detail + ")";
        case SQLITE_NOTADB: return "not an Engram project, or the file is corrupted (" + detail + ")";
        case SQLITE_CORRUPT: return "the project file is corrupted (" + detail + ")";
        case SQLITE_CANTOPEN: return "cannot open the file (" + detail + ")";
        case SQLITE_IOERR: return "disk I/O error (" + detail + ")";
        default: return detail;
    }
}

ErrorKind kind_of(int rc) {
    switch (rc & 0xff) {
        case SQLITE_NOTADB:
        case SQLITE_CORRUPT: return ErrorKind::Format;
        case SQLITE_MISUSE:
        case SQLITE_RANGE: return ErrorKind::Internal;
        default: return ErrorKind::Io;
    }
}

}  // namespace

Database::Database(const fs::path& file, Mode mode) : file_(file) {
    int flags = SQLITE_OPEN_NOMUTEX;
    switch (mode) {
        case Mode::ReadOnly: flags |= SQLITE_OPEN_READONLY; break;
        case Mode::ReadWrite: flags |= SQLITE_OPEN_READWRITE; break;
        case Mode::Create: flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE; break;
    }
    const int rc = sqlite3_open_v2(file.c_str(), &db_, flags, nullptr);
    if (rc != SQLITE_OK) {
        Error e(kind_of(rc), file.string() + ": opening the project: " + reason(rc, db_));
        sqlite3_close(db_);  // a handle is returned even on failure
        db_ = nullptr;
        throw e;
    }
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, 5000);
    // Project files are shared between people, so a file is untrusted input: ordinary SQL cannot
    // corrupt it (defensive), functions named in its schema do not run with our privileges
    // (trusted_schema off), no extension loads, and triggers and views, which Engram never
    // creates, never run (store::check_schema refuses them first).
    const std::pair<int, int> settings[] = {
        {SQLITE_DBCONFIG_DEFENSIVE, 1},     {SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0}, {SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0},
        {SQLITE_DBCONFIG_ENABLE_TRIGGER, 0}, {SQLITE_DBCONFIG_ENABLE_VIEW, 0},
    };
    for (const auto& [option, value] : settings) {
        int now = -1;
        if (sqlite3_db_config(db_, option, value, &now) != SQLITE_OK || now != value) {
            sqlite3_close(db_);
            db_ = nullptr;
            throw Error(ErrorKind::Internal, file.string() + ": this SQLite cannot open projects safely (setting " + std::to_string(option) + " refused)");
        }
    }
}

Database::~Database() { sqlite3_close_v2(db_); }

void Database::fail(int rc, const std::string& what) const {
    throw Error(kind_of(rc), file_.string() + ": " + what + ": " + reason(rc, db_));
}

void Database::exec(const char* script, const char* what) {
    char* message = nullptr;
    const int rc = sqlite3_exec(db_, script, nullptr, nullptr, &message);
    sqlite3_free(message);  // the same text is available from sqlite3_errmsg
    if (rc != SQLITE_OK) fail(rc, what);
}

int64_t Database::pragma_int(const char* name) {
    Statement st(*this, (std::string("PRAGMA ") + name).c_str());
    if (!st.step()) fail(SQLITE_ERROR, std::string("PRAGMA ") + name + " returned nothing");
    return st.column_int(0);
}

int64_t Database::last_insert_rowid() const { return sqlite3_last_insert_rowid(db_); }

bool Database::read_only() const { return sqlite3_db_readonly(db_, "main") == 1; }

Statement::Statement(Database& db, const char* sql) : db_(db), sql_(sql) {
    const char* tail = nullptr;
    const int rc = sqlite3_prepare_v2(db.handle(), sql, -1, &stmt_, &tail);
    if (rc != SQLITE_OK) db.fail(rc, "preparing '" + sql_ + "'");
    while (tail && (*tail == ' ' || *tail == '\n' || *tail == '\t' || *tail == ';')) ++tail;
    if (tail && *tail) {
        sqlite3_finalize(stmt_);
        stmt_ = nullptr;
        throw Error(ErrorKind::Internal, "one statement per prepare: trailing text after '" + sql_ + "'");
    }
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement& Statement::bind(int index, int64_t value) {
    if (int rc = sqlite3_bind_int64(stmt_, index, value); rc != SQLITE_OK) db_.fail(rc, "binding to '" + sql_ + "'");
    return *this;
}

Statement& Statement::bind(int index, double value) {
    if (int rc = sqlite3_bind_double(stmt_, index, value); rc != SQLITE_OK) db_.fail(rc, "binding to '" + sql_ + "'");
    return *this;
}

Statement& Statement::bind(int index, std::string_view text) {
    if (int rc = sqlite3_bind_text64(stmt_, index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8); rc != SQLITE_OK)
        db_.fail(rc, "binding to '" + sql_ + "'");
    return *this;
}

Statement& Statement::bind_blob(int index, const void* data, size_t size) {
    // SQLITE_STATIC: the caller keeps the bytes alive until the statement has run (avoids a copy of
    // megabytes of factors). A zero-length blob still binds as a blob, not NULL.
    const int rc = size == 0 ? sqlite3_bind_zeroblob(stmt_, index, 0) : sqlite3_bind_blob64(stmt_, index, data, size, SQLITE_STATIC);
    if (rc != SQLITE_OK) db_.fail(rc, "binding to '" + sql_ + "'");
    return *this;
}

Statement& Statement::bind_null(int index) {
    if (int rc = sqlite3_bind_null(stmt_, index); rc != SQLITE_OK) db_.fail(rc, "binding to '" + sql_ + "'");
    return *this;
}

bool Statement::step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    db_.fail(rc, "running '" + sql_ + "'");
}

void Statement::run() {
    while (step()) {
    }
    reset();
    sqlite3_clear_bindings(stmt_);  // no SQLITE_STATIC blob is left pointing at freed bytes
}

void Statement::reset() { sqlite3_reset(stmt_); }

bool Statement::is_null(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
int64_t Statement::column_int(int column) const { return sqlite3_column_int64(stmt_, column); }
double Statement::column_double(int column) const { return sqlite3_column_double(stmt_, column); }

std::string Statement::column_text(int column) const {
    const auto* p = sqlite3_column_text(stmt_, column);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_, column))) : std::string();
}

std::vector<uint8_t> Statement::column_blob(int column) const {
    const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, column));
    const int n = sqlite3_column_bytes(stmt_, column);
    return p ? std::vector<uint8_t>(p, p + n) : std::vector<uint8_t>();
}

Transaction::Transaction(Database& db) : db_(db) { db_.exec("BEGIN IMMEDIATE", "starting a transaction"); }

Transaction::~Transaction() {
    if (done_) return;
    // After some errors (SQLITE_FULL, SQLITE_IOERR) SQLite has already rolled back; then this is a no-op.
    if (!sqlite3_get_autocommit(db_.handle())) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
    db_.exec("COMMIT", "committing");
    done_ = true;
}

}  // namespace engram::sql
