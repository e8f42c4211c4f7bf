// Thin RAII layer over the SQLite C API used by the store: a Connection (one sqlite3 handle with
// the store's pragmas) and a Statement (one prepared statement with typed binds and columns).
// SQLite result codes become Status values whose message names the database file, the statement
// and the fix where one is known (locked, disk full, not a database, corrupt, read-only).
//
// Thread safety: a Connection and its Statements are used by one thread at a time (the store
// hands connections out one per caller). Opened with SQLITE_OPEN_NOMUTEX.
// Ownership: a Connection owns its handle; a Statement owns its prepared statement and must not
// outlive the Connection that prepared it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "common/status.h"

struct sqlite3;
struct sqlite3_stmt;

namespace spark::store::internal {

class Connection;

class Statement {
 public:
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&&) = delete;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Binds parameter `index` (1-based, as in SQL "?1").
  Statement& Bind(int index, int64_t value);
  Statement& Bind(int index, double value);
  Statement& Bind(int index, std::string_view value);  // copied (SQLITE_TRANSIENT)
  Statement& BindNull(int index);
  Statement& Bind(int index, std::optional<int64_t> value);

  // Advances: true when a row is available, false when done.
  Result<bool> Step();
  // Steps to completion, expecting no rows (INSERT/UPDATE/DELETE).
  Status Run();

  int64_t ColumnInt(int column) const;  // 0-based
  double ColumnDouble(int column) const;
  std::string ColumnText(int column) const;
  bool ColumnIsNull(int column) const;
  std::optional<int64_t> ColumnOptionalInt(int column) const;

 private:
  friend class Connection;
  Statement(Connection& connection, sqlite3_stmt* stmt) : connection_(&connection), stmt_(stmt) {}

  Connection* connection_;
  sqlite3_stmt* stmt_;
  // The first bind failure (SQLITE_RANGE, SQLITE_NOMEM), reported by the next Step.
  int bind_error_ = 0;
};

class Connection {
 public:
  // Opens `path` (read-write and created when missing, or read-only) with busy_timeout,
  // foreign_keys=ON and, when writable, journal_mode=WAL and synchronous=FULL; a read-only
  // connection requires the database to be in WAL mode already.
  static Result<std::unique_ptr<Connection>> Open(const std::string& path, bool read_only,
                                                  int busy_timeout_ms);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs one or more statements that return no rows of interest.
  Status Exec(std::string_view sql);
  Result<Statement> Prepare(std::string_view sql);
  // Runs a single-value query ("PRAGMA journal_mode") and returns its first column as text.
  Result<std::string> QueryText(std::string_view sql);

  int64_t LastInsertRowId() const;
  int64_t Changes() const;
  // False while a transaction is open.
  bool autocommit() const;
  const std::string& path() const { return path_; }
  sqlite3* handle() { return db_; }

  // The Status for SQLite result code `rc` while doing `what`, with sqlite3_errmsg and a fix.
  Status Error(int rc, std::string_view what) const;

 private:
  Connection(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  sqlite3* db_;
  std::string path_;
};

}  // namespace spark::store::internal
