// Driver matrix: pgJDBC with prepareThreshold=1, so every PreparedStatement runs as a named
// server-side statement from its first execution (pgJDBC keeps them per connection, by SQL,
// with their row descriptions).
//
// Implements the workload of MATRIX.md beside this file and prints its summary. Built at test
// time: javac -cp postgresql.jar -d DIR JdbcMatrix.java; java -cp DIR:postgresql.jar JdbcMatrix
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

public class JdbcMatrix {
    static final int ROWS = 50;
    static final int BLOB_LEN = 100 * 1024;
    static final int BIG_REPEAT = 10 * 1024 * 1024 / 16;

    static final String ECHO = "select ?::int as w, ?::int as n, ?::text as tag";
    static final String STAR = "select * from matrix_t where id = ?";
    static final String COLS = "select id, a, b from matrix_t where id = ?";
    static final String LATE = "select c from matrix_t where id = ?";
    static final String BLOB = "select ?::bytea as v, ?::int as w, ?::int as n";
    static final String DIV = "select 100 / ?::int as q";
    static final String BIG = "select repeat(?::text, ?::int) as v";
    static final String PID = "select ?::int as n, pg_backend_pid() as pid";

    static int maxDetails;
    static int workers;
    static int iterations;

    /** A JDBC URL and its properties (the password stays in the properties, never printed). */
    record Target(String jdbcUrl, Properties props) {
        static Target of(String url) {
            URI u = URI.create(url);
            String[] userInfo = u.getRawUserInfo().split(":", 2);
            Properties p = new Properties();
            p.setProperty("user", URLDecoder.decode(userInfo[0], StandardCharsets.UTF_8));
            if (userInfo.length > 1) {
                p.setProperty("password", URLDecoder.decode(userInfo[1], StandardCharsets.UTF_8));
            }
            p.setProperty("prepareThreshold", "1");
            p.setProperty("connectTimeout", "30");
            String query = u.getRawQuery() == null ? "" : "?" + u.getRawQuery();
            return new Target("jdbc:postgresql://" + u.getHost() + ":" + u.getPort() + u.getRawPath() + query, p);
        }

        Connection connect() throws SQLException {
            return DriverManager.getConnection(jdbcUrl, props);
        }
    }

    static Target workload;
    static Target direct;

    // ---- expected values -------------------------------------------------------------

    /** Rows as lists of "name=value" (bytea as hex). */
    static List<List<String>> row(String... cols) {
        List<List<String>> rows = new ArrayList<>();
        rows.add(Arrays.asList(cols));
        return rows;
    }

    static List<List<String>> tableRow(int epoch, int id) {
        if (epoch == 0) return row("id=" + id, "a=" + id * 10, "b=b" + id);
        if (epoch == 1) return row("id=" + id, "a=" + id * 10, "b=b" + id, "c=c" + id);
        return row("c=c" + id, "b=b" + id, "id=" + id, "a=" + id * 100);
    }

    static List<List<String>> colsRow(int epoch, int id) {
        return row("id=" + id, "a=" + id * (epoch == 2 ? 100 : 10), "b=b" + id);
    }

    static byte[] blob(int w, int n) {
        byte[] v = new byte[BLOB_LEN];
        byte[] header = String.format("w%03dn%05d", w, n).getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(header, 0, v, 0, header.length);
        for (int k = 10; k < BLOB_LEN; k++) v[k] = (byte) ((k + 7 * w + 13 * n) % 256);
        return v;
    }

    static final char[] HEX = "0123456789abcdef".toCharArray();

    static String hex(byte[] b) {
        char[] out = new char[b.length * 2];
        for (int i = 0; i < b.length; i++) {
            out[2 * i] = HEX[(b[i] >> 4) & 15];
            out[2 * i + 1] = HEX[b[i] & 15];
        }
        return "\\x" + new String(out);
    }

    static List<List<String>> rowsOf(ResultSet rs) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        List<List<String>> rows = new ArrayList<>();
        while (rs.next()) {
            List<String> cols = new ArrayList<>();
            for (int c = 1; c <= md.getColumnCount(); c++) {
                String v = md.getColumnType(c) == Types.BINARY ? hex(rs.getBytes(c)) : rs.getString(c);
                cols.add(md.getColumnLabel(c) + "=" + v);
            }
            rows.add(cols);
        }
        return rows;
    }

    static String shorten(Object v) {
        String text = String.valueOf(v);
        return text.length() <= 300 ? text : text.substring(0, 300) + "... (" + text.length() + " chars)";
    }

    // ---- counting --------------------------------------------------------------------

    static final Object LOCK = new Object();
    static long queries, ok, wrong, stale;
    static final TreeMap<String, Long> ERRORS = new TreeMap<>();
    static final List<String> DETAILS = new ArrayList<>();

    static void detail(String text) {
        if (DETAILS.size() < maxDetails) DETAILS.add(text);
    }

    /** outcome: ok, stale (an accepted 0A000), wrong, or an error's SQLSTATE. */
    static void record(String outcome, String where, String text, boolean expected) {
        synchronized (LOCK) {
            queries++;
            switch (outcome) {
                case "ok" -> ok++;
                case "stale" -> {
                    ok++;
                    stale++;
                }
                case "wrong" -> {
                    wrong++;
                    detail("wrong: " + where + ": " + text);
                }
                default -> {
                    ERRORS.merge(outcome, 1L, Long::sum);
                    if (!expected) detail("error " + outcome + ": " + where + ": " + text);
                }
            }
        }
    }

    /** The DDL changes (counted from 1) after which a statement's result columns differ. */
    static int[] changes(String op) {
        return switch (op) {
            case "star" -> new int[] {1, 2};
            case "cols" -> new int[] {2};
            default -> new int[] {};
        };
    }

    interface Op {
        List<List<String>> run(Connection c) throws SQLException;
    }

    static List<List<String>> query(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) {
                if (params[i] instanceof byte[] b) ps.setBytes(i + 1, b);
                else if (params[i] instanceof Integer n) ps.setInt(i + 1, n);
                else ps.setString(i + 1, (String) params[i]);
            }
            try (ResultSet rs = ps.executeQuery()) {
                return rowsOf(rs);
            }
        }
    }

    static class Worker {
        final int w;
        Connection conn;
        final Map<String, Integer> prepared = new HashMap<>();

        Worker(int w) {
            this.w = w;
        }

        /** Runs op and records the outcome; `error` is the SQLSTATE expected instead. */
        void run(String op, int epoch, String where, Op body, List<List<String>> want, String error) {
            try {
                if (conn == null || conn.isClosed()) {
                    conn = workload.connect();
                    prepared.clear();
                }
                prepared.putIfAbsent(op, epoch);
                List<List<String>> got = body.run(conn);
                if (error != null) record("wrong", where, "got " + shorten(got) + ", expected error " + error, false);
                else if (got.equals(want)) record("ok", where, "", false);
                else record("wrong", where, "got " + shorten(got) + ", expected " + shorten(want), false);
            } catch (RuntimeException e) {
                // pgJDBC decoding a row that does not match the description it holds.
                record("X-" + e.getClass().getSimpleName(), where, String.valueOf(e.getMessage()), false);
            } catch (SQLException e) {
                String code = e.getSQLState() == null ? "X-" + e.getClass().getSimpleName() : e.getSQLState();
                Integer p = prepared.get(op);
                if (code.equals("0A000") && p != null && Arrays.stream(changes(op)).anyMatch(c -> p < c && c <= epoch)) {
                    // pgJDBC prepares again and retries by itself: seen only if that failed too.
                    record("stale", where, "", false);
                    return;
                }
                record(code, where, String.valueOf(e.getMessage()).lines().findFirst().orElse(""), code.equals(error));
                if (code.startsWith("08")) {
                    try {
                        conn.close();
                    } catch (SQLException ignored) {
                        // closing a broken connection
                    }
                    conn = null;
                }
            }
        }

        void epoch(int e) {
            for (int i = 0; i < iterations; i++) {
                int n = e * iterations + i;
                int id = (w * 7 + n) % ROWS + 1;
                String at = "worker " + w + " epoch " + e + " i " + i;
                String tag = w + ":" + n;
                run("echo", e, at + " echo", c -> query(c, ECHO, w, n, tag), row("w=" + w, "n=" + n, "tag=" + tag), null);
                if (e >= w % 3) run("star", e, at + " star", c -> query(c, STAR, id), tableRow(e, id), null);
                run("cols", e, at + " cols", c -> query(c, COLS, id), colsRow(e, id), null);
                if (i % 5 == 0) {
                    run("late", e, at + " late", c -> query(c, LATE, id), row("c=c" + id), e == 0 ? "42703" : null);
                }
                if (i % 4 == 1) {
                    byte[] v = blob(w, n);
                    run("blob", e, at + " blob", c -> query(c, BLOB, v, w, n), row("v=" + hex(v), "w=" + w, "n=" + n), null);
                }
                if (i % 7 == 3) {
                    int d = n % 3;
                    run("div", e, at + " div", c -> query(c, DIV, d), row("q=" + 100 / Math.max(d, 1)), d == 0 ? "22012" : null);
                }
                if (i == 2) {
                    String t = String.format("%03d:%05d:abcdef", w, n);
                    run("big", e, at + " big", c -> query(c, BIG, t, BIG_REPEAT), row("v=" + t.repeat(BIG_REPEAT)), null);
                }
                if (i % 10 == 6) {
                    run("txn", e, at + " txn", c -> txn(c, n), row("n=" + n, "n=" + (n + 1), "same backend=true"), null);
                }
            }
        }

        /** Two statements in one transaction: right rows, one backend. */
        static List<List<String>> txn(Connection c, int n) throws SQLException {
            c.setAutoCommit(false);
            try {
                List<String> got = new ArrayList<>();
                String pid = null;
                boolean same = true;
                for (int k = 0; k < 2; k++) {
                    try (PreparedStatement ps = c.prepareStatement(PID)) {
                        ps.setInt(1, n + k);
                        try (ResultSet rs = ps.executeQuery()) {
                            while (rs.next()) {
                                got.add("n=" + rs.getInt(1));
                                same &= pid == null || pid.equals(rs.getString(2));
                                pid = rs.getString(2);
                            }
                        }
                    }
                }
                c.commit();
                got.add("same backend=" + same);
                List<List<String>> rows = new ArrayList<>();
                rows.add(got);
                return rows;
            } catch (SQLException e) {
                c.rollback();
                throw e;
            } finally {
                c.setAutoCommit(true);
            }
        }
    }

    static void setup() throws SQLException {
        try (Connection c = workload.connect(); Statement s = c.createStatement()) {
            s.execute("drop table if exists matrix_t");
            s.execute("create table matrix_t (id int primary key, a int not null, b text not null)");
            s.execute("insert into matrix_t select g, g * 10, 'b' || g from generate_series(1, 50) g");
        }
    }

    static void ddl(int number) throws SQLException {
        if (number == 1) {
            try (Connection c = direct.connect(); Statement s = c.createStatement()) {
                s.execute("alter table matrix_t add column c text");
                s.execute("update matrix_t set c = 'c' || id");
            }
            return;
        }
        try (Connection c = workload.connect(); Statement s = c.createStatement()) {
            c.setAutoCommit(false);
            s.execute("drop table matrix_t");
            s.execute("create table matrix_t (c text not null, b text not null, id int primary key, a bigint not null)");
            s.execute("insert into matrix_t select 'c' || g, 'b' || g, g, g * 100 from generate_series(1, 50) g");
            c.commit();
        }
    }

    static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }

    public static void main(String[] args) throws Exception {
        String url = System.getenv("DATABASE_URL");
        if (url == null) {
            System.err.println("DATABASE_URL is required");
            System.exit(2);
        }
        workload = Target.of(url);
        direct = Target.of(env("DDL_URL", url));
        workers = Integer.parseInt(env("WORKERS", "6"));
        iterations = Integer.parseInt(env("ITERATIONS", "20"));
        maxDetails = Integer.parseInt(env("MAX_DETAILS", "10"));

        setup();
        List<Worker> all = new ArrayList<>();
        for (int w = 0; w < workers; w++) all.add(new Worker(w));
        ExecutorService pool = Executors.newFixedThreadPool(workers, r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        String encoding = "-";
        for (int e = 0; e < 3; e++) {
            if (e > 0) ddl(e);
            final int epoch = e;
            List<Future<?>> done = new ArrayList<>();
            for (Worker wk : all) done.add(pool.submit(() -> wk.epoch(epoch)));
            for (Future<?> f : done) f.get();
            System.err.println("pgjdbc: epoch " + e + " done");
            if (e == 0) {
                for (Worker wk : all) {
                    if (wk.conn != null && !wk.conn.isClosed()) {
                        encoding = wk.conn.unwrap(org.postgresql.PGConnection.class).getParameterStatus("client_encoding");
                        break;
                    }
                }
            }
        }
        pool.shutdown();
        for (Worker wk : all) {
            if (wk.conn != null) wk.conn.close();
        }
        for (String d : DETAILS) System.out.println("detail: " + d);
        StringBuilder errors = new StringBuilder();
        ERRORS.forEach((k, v) -> errors.append(errors.length() == 0 ? "" : ",").append(k).append(':').append(v));
        System.out.println("version: pgJDBC " + org.postgresql.util.DriverInfo.DRIVER_VERSION + ", java "
                + System.getProperty("java.version"));
        System.out.println("summary: queries=" + queries + " ok=" + ok + " wrong=" + wrong + " errors="
                + (errors.length() == 0 ? "none" : errors) + " client_encoding=" + encoding);
        System.out.println("stale: 0A000=" + stale);
        System.exit(0);
    }
}
