defmodule Automata.DatabaseTest do
  use ExUnit.Case

  alias Automata.Release

  @moduletag :database

  test "the PostgreSQL service answers and migrations apply" do
    config = Release.database_config()
    assert config.database == "automata_test"
    assert Release.sql("SELECT 40 + 2", config) == "42"
    Release.migrate(config)
    Release.migrate(config)
    Release.sql("INSERT INTO signals VALUES ('open', 1)", config)
    assert String.to_integer(Release.sql("SELECT count(*) FROM signals", config)) >= 1
  end
end
