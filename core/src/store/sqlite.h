// Raw sqlite3 behind three small RAII classes: Database (the connection), Statement (a prepared
// statement, one per SQL string, values bound by index) and Transaction (BEGIN IMMEDIATE, rolled
// back by the destructor unless committed). Every failure becomes an engram::Error naming the file
// and what was being done; SQLITE_FULL, SQLITE_READONLY, SQLITE_BUSY, SQLITE_NOTADB and
// SQLITE_CORRUPT get their own plain-language message.
//
// Values only ever reach SQL through bind(); exec() is for fixed, parameterless scripts (schema
// migrations, PRAGMAs). A connection is used by one thread at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace engram::sql {

class Database {
public:
    enum class Mode { ReadOnly, ReadWrite, Create };
    Database(const std::filesystem::path& file, Mode mode);
    ~Database();
    Database(const Database&) = delete;
    Database& operator=(const Database&) = delete;

    // Runs a fixed script (one or more statements, no parameters, results discarded).
    void exec(const char* script, const char* what);
    int64_t pragma_int(const char* name);  // "PRAGMA <name>", first column of the first row
    int64_t last_insert_rowid() const;
    bool read_only() const;
    const std::filesystem::path& file() const { return file_; }
    sqlite3* handle() const { return db_; }

    // Throws the engram::Error for result code `rc` while doing `what`.
    [[noreturn]] void fail(int rc, const std::string& what) const;

private:
    std::filesystem::path file_;
    sqlite3* db_ = nullptr;
};

class Statement {
public:
    Statement(Database& db, const char* sql);
    ~Statement();
    Statement(const Statement&) = delete;
    Statement& operator=(const Statement&) = delete;

    // SQLite binds from 1 and reads columns from 0.
    Statement& bind(int index, int64_t value);
    Statement& bind(int index, double value);
    Statement& bind(int index, std::string_view text);
    Statement& bind(int index, const char* text) { return bind(index, std::string_view(text)); }
    Statement& bind_blob(int index, const void* data, size_t size);
    Statement& bind_null(int index);

    bool step();  // true while a row is available
    void run();   // steps to completion, then resets and clears the bindings; for statements without results
    void reset(); // ready to run again (bindings kept)

    bool is_null(int column) const;
    int64_t column_int(int column) const;
    double column_double(int column) const;
    std::string column_text(int column) const;
    std::vector<uint8_t> column_blob(int column) const;

private:
    Database& db_;
    sqlite3_stmt* stmt_ = nullptr;
    std::string sql_;
};

class Transaction {
public:
    explicit Transaction(Database& db);  // BEGIN IMMEDIATE: takes the write lock up front
    ~Transaction();                      // ROLLBACK unless committed; never throws
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    void commit();

private:
    Database& db_;
    bool done_ = false;
};

}  // namespace engram::sql
