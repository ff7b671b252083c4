#!/usr/bin/env ruby
# frozen_string_literal: true

# Driver matrix: ActiveRecord (PostgreSQL adapter on ruby-pg) with prepared_statements: true, as
# a Rails app's database.yml has it: queries with binds go through AR's statement pool (named
# server-side statements a1, a2, ...), a model query included; session advisory locks.
#
# Implements the workload of MATRIX.md beside this file and prints its summary.

require 'active_record'
require 'pg'
require 'uri'

URL = ENV.fetch('DATABASE_URL')
DDL_URL = ENV.fetch('DDL_URL', URL)
WORKERS = Integer(ENV.fetch('WORKERS', '6'))
ITERATIONS = Integer(ENV.fetch('ITERATIONS', '20'))
MAX_DETAILS = Integer(ENV.fetch('MAX_DETAILS', '10'))
ROWS = 50
BLOB_LEN = 100 * 1024
BIG_REPEAT = 10 * 1024 * 1024 / 16

ECHO = 'select $1::int as w, $2::int as n, $3::text as tag'
STAR = 'select * from matrix_t where id = $1'
LATE = 'select c from matrix_t where id = $1'
BLOB = 'select $1::bytea as v, $2::int as w, $3::int as n'
DIV = 'select 100 / $1::int as q'
BIG = 'select repeat($1::text, $2::int) as v'
PID = 'select $1::int as n, pg_backend_pid() as pid'
BAD = 'select no_such_column from matrix_t where id = $1'
# The `cols` op is the model's `where(id:).pluck(:id, :a, :b)`, which AR prepares as
# SELECT "matrix_t"."id", "matrix_t"."a", "matrix_t"."b" FROM "matrix_t" WHERE "matrix_t"."id" = $1

# The DDL changes (counted from 1) after which a statement's result columns differ.
CHANGES = { 'star' => [1, 2], 'cols' => [2] }.freeze
PATTERN = (0..255).to_a.pack('C*') * (BLOB_LEN / 256 + 2)
LOCK_TURN = Mutex.new

class Item < ActiveRecord::Base
  self.table_name = 'matrix_t'
end

def table_row(epoch, id)
  case epoch
  when 0 then [['id', id.to_s], ['a', (id * 10).to_s], ['b', "b#{id}"]]
  when 1 then [['id', id.to_s], ['a', (id * 10).to_s], ['b', "b#{id}"], ['c', "c#{id}"]]
  else [['c', "c#{id}"], ['b', "b#{id}"], ['id', id.to_s], ['a', (id * 100).to_s]]
  end
end

def blob(w, n)
  off = (7 * w + 13 * n) % 256
  format('w%03dn%05d', w, n).b + PATTERN.byteslice(off + 10, BLOB_LEN - 10)
end

def bind(name, value, type)
  ActiveRecord::Relation::QueryAttribute.new(name, value, type)
end

INT = ActiveRecord::Type::Integer.new
TEXT = ActiveRecord::Type::String.new
BYTES = ActiveRecord::Type::Binary.new

# Rows as [[name, text]] in the server's column order; bytea decoded to its bytes.
def rows_of(result)
  result.rows.map do |row|
    result.columns.zip(row).map do |name, v|
      type = result.column_types[name]
      v = type.deserialize(v) if type.is_a?(ActiveRecord::ConnectionAdapters::PostgreSQL::OID::Bytea)
      [name, v.is_a?(String) ? v.b : v.to_s]
    end
  end
end

def short(v)
  text = v.inspect
  text.size <= 300 ? text : "#{text[0, 300]}... (#{text.size} chars)"
end

class Stats
  attr_reader :details

  def initialize
    @lock = Mutex.new
    @queries = @ok = @wrong = @stale = 0
    @errors = Hash.new(0)
    @details = []
  end

  def detail(text)
    @lock.synchronize { @details << text if @details.size < MAX_DETAILS }
  end

  # outcome: :ok, :stale (an accepted 0A000), :wrong, or an error's SQLSTATE; an error the
  # workload expects is counted without a detail line.
  def record(outcome, where, text = '', expected: false)
    @lock.synchronize do
      @queries += 1
      case outcome
      when :ok then @ok += 1
      when :stale
        @ok += 1
        @stale += 1
      when :wrong
        @wrong += 1
        @details << "wrong: #{where}: #{text}" if @details.size < MAX_DETAILS
      else
        @errors[outcome] += 1
        @details << "error #{outcome}: #{where}: #{text}" if !expected && @details.size < MAX_DETAILS
      end
    end
  end

  def summary(encoding)
    errors = @errors.sort.map { |k, v| "#{k}:#{v}" }.join(',')
    errors = 'none' if errors.empty?
    ["summary: queries=#{@queries} ok=#{@ok} wrong=#{@wrong} errors=#{errors} client_encoding=#{encoding}",
     "stale: 0A000=#{@stale}"]
  end
end

STATS = Stats.new

def sqlstate(err)
  cause = err.is_a?(PG::Error) ? err : err.cause
  code = cause.respond_to?(:result) && cause.result ? cause.result.error_field(PG::PG_DIAG_SQLSTATE) : nil
  code || "X-#{err.class.name.split('::').last}"
end

# One worker: a thread of its own for its whole life, so that ActiveRecord's connection for
# that thread (and the statements prepared on it) lasts across the epochs.
class Worker
  attr_reader :inbox

  def initialize(w, done)
    @w = w
    @done = done
    @inbox = Queue.new
    @prepared = {}
    @thread = Thread.new { loop_epochs }
  end

  def join
    @inbox << nil
    @thread.join
  end

  def loop_epochs
    while (e = @inbox.pop)
      begin
        epoch(e)
      rescue StandardError => err
        STATS.detail("worker #{@w} epoch #{e} stopped: #{err.class}: #{err.message}")
      end
      @done << @w
    end
    ActiveRecord::Base.connection_pool.release_connection
  end

  def conn
    ActiveRecord::Base.connection
  end

  def query(sql, *binds)
    rows_of(conn.exec_query(sql, 'matrix', binds, prepare: true))
  end

  # Runs the block -> [got, want] and records the outcome; `error` is the SQLSTATE the
  # workload expects instead of a result.
  def run(op, epoch, where, error: nil)
    @prepared[op] ||= epoch
    got, want = yield
    if error
      STATS.record(:wrong, where, "got #{short(got)}, expected error #{error}")
    elsif got == want
      STATS.record(:ok, where)
    else
      STATS.record(:wrong, where, "got #{short(got)}, expected #{short(want)}")
    end
  rescue StandardError => err
    code = sqlstate(err)
    p = @prepared[op]
    if code == '0A000' && p && CHANGES.fetch(op, []).any? { |c| p < c && c <= epoch }
      # ActiveRecord prepares again and retries by itself outside transactions: seen only
      # if that failed too.
      STATS.record(:stale, where)
      return
    end
    STATS.record(code, where, err.message.lines.first.to_s.strip, expected: code == error)
    conn.reconnect! if code.start_with?('X-', '08') && !conn.active?
  end

  def epoch(e)
    w = @w
    ITERATIONS.times do |i|
      n = e * ITERATIONS + i
      id = (w * 7 + n) % ROWS + 1
      at = "worker #{w} epoch #{e} i #{i}"
      run('echo', e, "#{at} echo") do
        [query(ECHO, bind('w', w, INT), bind('n', n, INT), bind('tag', "#{w}:#{n}", TEXT)),
         [[['w', w.to_s], ['n', n.to_s], ['tag', "#{w}:#{n}"]]]]
      end
      if e >= w % 3
        run('star', e, "#{at} star") { [query(STAR, bind('id', id, INT)), [table_row(e, id)]] }
      end
      run('cols', e, "#{at} cols") do
        got = Item.where(id: id).pluck(:id, :a, :b).map { |r| [['id', r[0].to_s], ['a', r[1].to_s], ['b', r[2].to_s]] }
        [got, [[['id', id.to_s], ['a', (id * (e == 2 ? 100 : 10)).to_s], ['b', "b#{id}"]]]]
      end
      if (i % 5).zero?
        run('late', e, "#{at} late", error: e.zero? ? '42703' : nil) do
          [query(LATE, bind('id', id, INT)), [[['c', "c#{id}"]]]]
        end
      end
      if i % 4 == 1
        v = blob(w, n)
        run('blob', e, "#{at} blob") do
          [query(BLOB, bind('v', v, BYTES), bind('w', w, INT), bind('n', n, INT)),
           [[['v', v], ['w', w.to_s], ['n', n.to_s]]]]
        end
      end
      if i % 7 == 3
        d = n % 3
        run('div', e, "#{at} div", error: d.zero? ? '22012' : nil) do
          [query(DIV, bind('d', d, INT)), [[['q', (100 / [d, 1].max).to_s]]]]
        end
      end
      if i == 2
        tag = format('%03d:%05d:abcdef', w, n)
        run('big', e, "#{at} big") do
          [query(BIG, bind('t', tag, TEXT), bind('r', BIG_REPEAT, INT)), [[['v', tag * BIG_REPEAT]]]]
        end
      end
      run('txn', e, "#{at} txn") { txn(n) } if i % 10 == 6
      run('lock', e, "#{at} lock") { advisory_lock(n) } if i == 4
      run('prepare', e, "#{at} prepare", error: '42703') { prepare_bad(n) } if i == 7
    end
  end

  # Two statements in one transaction: right rows, one backend.
  def txn(n)
    first = second = nil
    ActiveRecord::Base.transaction do
      first = conn.exec_query(PID, 'matrix', [bind('n', n, INT)], prepare: true).rows
      second = conn.exec_query(PID, 'matrix', [bind('n', n + 1, INT)], prepare: true).rows
    end
    [[first.map { |r| r[0] }, second.map { |r| r[0] }, first[0][1] == second[0][1]], [[n], [n + 1], true]]
  end

  # A session advisory lock (as Rails' migrations take it): while this connection holds it,
  # another connection cannot take it; once released, it can. One worker at a time: a pooler
  # in transaction mode gives a client holding a session lock a server of its own, and six of
  # them with their probes would hold a pool of 3 servers among themselves and wait forever.
  def advisory_lock(n)
    key = 7_000_000 + @w * 1000 + n
    pool = ActiveRecord::Base.connection_pool
    LOCK_TURN.synchronize do
      other = pool.checkout
      begin
        got = [conn.get_advisory_lock(key), other.get_advisory_lock(key), conn.release_advisory_lock(key),
               other.get_advisory_lock(key), other.release_advisory_lock(key)]
      ensure
        pool.checkin(other)
      end
      [got, [true, false, true, true, true]]
    end
  end

  # ActiveRecord prepares a statement with ruby-pg's prepare (Parse, Sync) before it binds:
  # PostgreSQL fails a statement naming a missing column there, and AR keeps no statement.
  def prepare_bad(n)
    conn.raw_connection.prepare("matrix_bad_#{@w}_#{n}", BAD)
    [['prepared'], ['an error']]
  end
end

def setup
  ActiveRecord::Base.connection_pool.with_connection do |c|
    c.execute('drop table if exists matrix_t')
    c.execute('create table matrix_t (id int primary key, a int not null, b text not null)')
    c.execute("insert into matrix_t select g, g * 10, 'b' || g from generate_series(1, 50) g")
  end
end

def ddl(number)
  if number == 1
    direct = PG.connect(DDL_URL)
    begin
      direct.exec('alter table matrix_t add column c text')
      direct.exec("update matrix_t set c = 'c' || id")
    ensure
      direct.close
    end
    return
  end
  ActiveRecord::Base.connection_pool.with_connection do |c|
    c.transaction do
      c.execute('drop table matrix_t')
      c.execute('create table matrix_t (c text not null, b text not null, id int primary key, a bigint not null)')
      c.execute("insert into matrix_t select 'c' || g, 'b' || g, g, g * 100 from generate_series(1, 50) g")
    end
  end
end

def main
  ActiveRecord::Base.establish_connection(
    url: URL, adapter: 'postgresql', prepared_statements: true, encoding: 'unicode',
    pool: WORKERS * 2 + 2, checkout_timeout: 30, connect_timeout: 30
  )
  setup
  done = Queue.new
  workers = Array.new(WORKERS) { |w| Worker.new(w, done) }
  encoding = '-'
  3.times do |e|
    ddl(e) if e.positive?
    workers.each { |wk| wk.inbox << e }
    WORKERS.times { done.pop }
    warn "activerecord: epoch #{e} done"
    next unless e.zero?

    ActiveRecord::Base.connection_pool.with_connection do |c|
      encoding = c.raw_connection.parameter_status('client_encoding')
    end
  end
  workers.each(&:join)
  STATS.details.each { |d| puts "detail: #{d}" }
  puts "version: activerecord #{ActiveRecord.version}, ruby-pg #{PG::VERSION}, ruby #{RUBY_VERSION}"
  puts STATS.summary(encoding)
end

main
