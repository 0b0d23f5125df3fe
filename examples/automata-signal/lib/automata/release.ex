defmodule Automata.Release do
  @moduledoc "Release tasks, such as the migration the production deploy runs once."

  @doc "Connection settings from DATABASE_URL (postgres://user:pass@host:port/db)."
  def database_config(url \\ System.get_env("DATABASE_URL")) do
    %URI{userinfo: userinfo, host: host, port: port, path: "/" <> db} = URI.parse(url)
    [user | _] = String.split(userinfo || "postgres", ":")
    %{user: user, host: host, port: port, database: db}
  end

  @doc "Runs one SQL statement with psql; returns trimmed output."
  def sql(statement, config \\ database_config()) do
    args = [
      "-h",
      config.host,
      "-p",
      Integer.to_string(config.port),
      "-U",
      config.user,
      "-d",
      config.database,
      "-tAc",
      statement
    ]

    {out, 0} = System.cmd("psql", args, stderr_to_stdout: true)
    String.trim(out)
  end

  @doc "Creates the signals table if it is missing (idempotent)."
  def migrate(config \\ database_config()) do
    sql("CREATE TABLE IF NOT EXISTS signals (name text NOT NULL, at bigint NOT NULL)", config)
  end
end
