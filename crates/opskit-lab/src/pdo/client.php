<?php
// The application of spec §5 in miniature: PHP PDO (pdo_mysql, mysqlnd) through HAProxy.
// Usage: php client.php HOST PORT USER PASSWORD_FILE MODE SECONDS [BYTES]
//   MODE idle: connect, SELECT CONNECTION_ID(), sleep SECONDS, SELECT 1
//   MODE big:  connect, SELECT a BYTES-long literal, then SELECT 1 (max_allowed_packet)
// Prints one JSON line: {"ok":bool,"phase":"connect|first|big|after","error":"…",
// "connection_id":N,"server_id":N}. The password is read from a file, never from argv.
[$_, $host, $port, $user, $pwfile, $mode, $secs] = array_pad($argv, 7, null);
$bytes = (int)($argv[7] ?? 65536);
$out = ['ok' => false, 'phase' => 'connect', 'error' => null, 'connection_id' => null, 'server_id' => null];
try {
    $pdo = new PDO("mysql:host=$host;port=$port", $user, trim(file_get_contents($pwfile)),
        [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 5]);
    $out['phase'] = 'first';
    $row = $pdo->query('SELECT CONNECTION_ID(), @@server_id')->fetch(PDO::FETCH_NUM);
    [$out['connection_id'], $out['server_id']] = [(int)$row[0], (int)$row[1]];
    if ($mode === 'big') {
        $out['phase'] = 'big';
        try {
            $pdo->query("SELECT LENGTH('" . str_repeat('x', $bytes) . "')")->fetchAll();
        } catch (PDOException $e) {
            $out['big_error'] = $e->getMessage();
        }
    } else {
        usleep((int)((float)$secs * 1e6));
    }
    $out['phase'] = 'after';
    $pdo->query('SELECT 1')->fetchAll();
    $out['ok'] = true;
} catch (PDOException $e) {
    $out['error'] = $e->getMessage();
}
echo json_encode($out), "\n";
